"""Vectors in a Milvus collection: milvus-lite (the Milvus engine in-process, `INDEX/milvus.db`) by default, or a
Milvus server or cluster at `index.uri` (`http://host:19530`; a token from $MILVUS_TOKEN) for corpora beyond one
machine.

Generations without copying the collection: each row carries the generation that added it and the one that
deleted it (`added`, `deleted`), and a reader of generation g sees `added <= g < deleted`. A write of generation
g+1 inserts rows with added = g+1 and marks removed rows deleted = g+1; nothing it does is visible before the
manifest names g+1. After the commit the marked rows are dropped for good. A writer killed before its commit
leaves rows the next writer undoes first (`begin`). Re-embedding (every vector changes, perhaps its width) fills
a new collection `{name}__r{g}` and the manifest switches to it at the commit.

milvus-lite takes a lock on its directory: one process at a time may open a lite index (a Milvus server serves
many). Row ids are the SQLite row ids (never reused), so texts, metadata and BM25 stay in SQLite.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.index import IndexConfig

logger = logging.getLogger(__name__)
LITE_DIR = "milvus.db"  # milvus-lite's data directory inside the index directory (when index.uri is not set)
ALIVE = 2**62  # `deleted` of a row no generation has deleted
BATCH = 2000  # rows per insert (gRPC messages stay far below Milvus's 64 MB)
MAX_LIMIT = 16_384  # Milvus's largest top-k
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
FIELDS = ["id", "vector", "added"]  # what a row needs to be written again with another `deleted`
INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivfpq": "IVF_PQ", "auto": "AUTOINDEX"}


def _pymilvus() -> Any:
    lite = logging.getLogger("milvus_lite")  # a line per segment index built and server started: noise, not news
    if lite.level == logging.NOTSET:
        lite.setLevel(logging.WARNING)
    try:
        import pymilvus
    except ImportError:
        raise ConfigError("index.backend milvus needs pymilvus (and milvus-lite for a local index): "
                          "pip install 'mmadapt[milvus]'") from None
    return pymilvus


def _connect(uri: str, lite: bool) -> Any:
    pymilvus = _pymilvus()
    try:
        return pymilvus.MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))
    except pymilvus.MilvusException as e:
        if lite:
            raise DataError(f"{uri}: cannot open the milvus-lite database ({e.message}); milvus-lite lets one process "
                            "at a time open it: close the other process, or serve the index from a Milvus server "
                            "(index.uri: http://HOST:19530)") from None
        raise DataError(f"cannot reach Milvus at {uri}: {e.message}") from None


def release_lite(uri: str) -> None:
    """Stop this process's milvus-lite server for `uri` (its lock goes with it: the directory may move)."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


def lite_servers() -> set[str]:
    """The milvus-lite databases this process has a server running for."""
    import sys

    manager = sys.modules.get("milvus_lite.server_manager")
    return set(getattr(manager.server_manager_instance, "_servers", {})) if manager else set()


class MilvusVectors:
    files: tuple[str, ...] = ()  # nothing in the generation directory: the collection lives in Milvus
    owned = (LITE_DIR,)  # milvus-lite's directory, when index.uri is not set

    @classmethod
    def recorded_config(cls, config: IndexConfig) -> IndexConfig:
        """A milvus-lite path is recorded absolute: the index opens from any working directory."""
        if config.uri is not None and config.uri.endswith(".db"):
            return dataclasses.replace(config, uri=str(Path(config.uri).resolve()))
        return config

    @staticmethod
    def retire(index_dir: Path, config: IndexConfig, store: dict[str, Any], before_move: bool) -> None:
        """What an index replaced by `rag build --overwrite` keeps outside its files: before the new directory moves
        in, this process's milvus-lite server on the old one stops; once it has, the old collections are dropped
        (lite ones inside the index went with its directory)."""
        uri, lite = MilvusVectors.where(index_dir, config)
        if before_move:
            if lite:
                release_lite(uri)
        elif config.uri is not None:
            MilvusVectors.drop_all(uri, lite, store.get("milvus", {}).get("name"))

    def __init__(self, client: Any, uri: str, lite: bool, name: str, collection: str, config: IndexConfig, dim: int,
                 generation: int) -> None:
        self.client, self.uri, self.lite, self.name = client, uri, lite, name
        self.collection, self.config, self.dim, self.generation = collection, config, dim, generation
        self.pending: int | None = None
        self.replaced: str | None = None  # the collection a re-embedding replaces (dropped at its commit)

    # ----------------------------------------------------------------------------- opening
    @staticmethod
    def where(index_dir: Path, config: IndexConfig) -> tuple[str, bool]:
        if config.uri is None:
            return str(Path(index_dir).resolve() / LITE_DIR), True
        if config.uri.startswith(("http://", "https://", "tcp://", "unix:")):
            return config.uri, False
        if not config.uri.endswith(".db"):
            raise ConfigError(f"index.uri {config.uri!r}: a Milvus server (http://HOST:19530) or a milvus-lite "
                              "directory ending in .db")
        return str(Path(config.uri).resolve()), True

    @classmethod
    def create(cls, index_dir: Path, config: IndexConfig, dim: int) -> MilvusVectors:
        uri, lite = cls.where(index_dir, config)
        name = config.collection or f"mmadapt_{uuid.uuid4().hex[:12]}"
        if not _NAME.match(name):
            raise ConfigError(f"index.collection {name!r}: a letter or '_' then letters, digits or '_'")
        client = _connect(uri, lite)
        if client.has_collection(name):
            raise DataError(f"index.collection {name!r} already exists in Milvus at {uri}: choose another name (or "
                            "drop it, if no index uses it)")
        vectors = cls(client, uri, lite, name, name, config, dim, generation=1)
        vectors._create_collection(name, dim)
        return vectors

    @staticmethod
    def drop_all(uri: str, lite: bool, name: str | None) -> None:
        """Drop the collections of the index whose collections are named `name` (its re-embeddings included)."""
        if not name:
            return
        client = _connect(uri, lite)
        for collection in client.list_collections():
            if collection == name or collection.startswith(f"{name}__r"):
                client.drop_collection(collection)
        client.close()

    @classmethod
    def load(cls, index_dir: Path, store: dict[str, Any], config: IndexConfig, dim: int, gen_dir: Path) -> MilvusVectors:
        recorded = store.get("milvus", {})
        uri, lite = cls.where(index_dir, config)
        client = _connect(uri, lite)
        collection = recorded.get("collection")
        if not isinstance(collection, str) or not client.has_collection(collection):
            raise DataError(f"{index_dir}: its Milvus collection {collection!r} is missing at {uri}; the index is "
                            "damaged (rebuild it with `mmadapt rag build`)")
        client.load_collection(collection)
        return cls(client, uri, lite, recorded.get("name", collection), collection, config, dim, int(store["generation"]))

    def _create_collection(self, collection: str, dim: int) -> None:
        pymilvus = _pymilvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("added", pymilvus.DataType.INT64)
        schema.add_field("deleted", pymilvus.DataType.INT64)
        params = self.client.prepare_index_params()
        cfg = self.config
        knobs = {"hnsw": {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction},
                 "ivfpq": {"nlist": cfg.nlist or 1024, "m": cfg.pq_m or max(1, dim // 4), "nbits": cfg.pq_bits}}
        params.add_index(field_name="vector", index_type=INDEX_TYPES[cfg.kind], metric_type=cfg.metric.upper(),
                         params=knobs.get(cfg.kind, {}))
        self.client.create_collection(collection, schema=schema)
        # sync=False: pymilvus would poll (0.5 s sleeps) through an RPC milvus-lite lacks; load waits for it anyway
        self.client.create_index(collection, params, sync=False)
        self.client.load_collection(collection)

    # ----------------------------------------------------------------------------- reading
    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def ntotal(self) -> int:
        g = self.pending or self.generation
        rows = self.client.query(self.collection, filter=f"added <= {g} and deleted > {g}", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _visible(self) -> str:
        g = self.generation
        return f"added <= {g} and deleted > {g}"

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, excluded: np.ndarray | None,
               allowed_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by the index's metric (scores higher-is-better, like faiss); `allowed` ids: up to MAX_LIMIT of them are
        pushed into Milvus as an id list, more are applied to a deeper result (widened until k are found, at most
        MAX_LIMIT deep: the store scores a query left short exactly)."""
        q = len(queries)
        scores, ids = np.full((q, k), -np.inf, dtype=np.float32), np.full((q, k), -1, dtype=np.int64)
        if allowed is not None and len(allowed) == 0:
            return scores, ids
        pushed = allowed is not None and len(allowed) <= MAX_LIMIT  # an id list Milvus parses quickly
        where = self._visible() + (f" and id in [{','.join(str(int(i)) for i in allowed)}]" if pushed else "")
        fetch = k if allowed is None or pushed else min(MAX_LIMIT, math.ceil(2 * k / max(allowed_fraction, 1e-6)))
        keep = None if allowed is None or pushed else set(int(i) for i in allowed)
        for row, query in enumerate(queries):
            while True:
                found = self._search_one(query, fetch, where)
                if keep is not None:
                    found = [(i, s) for i, s in found if i in keep]
                if keep is None or len(found) >= k or fetch >= MAX_LIMIT or fetch >= self.ntotal:
                    break
                fetch = min(MAX_LIMIT, fetch * 4)
            for j, (i, s) in enumerate(found[:k]):
                ids[row, j], scores[row, j] = i, s
        return scores, ids

    def _search_one(self, query: np.ndarray, limit: int, where: str) -> list[tuple[int, float]]:
        params: dict[str, Any] = {"metric_type": self.config.metric.upper()}
        if self.config.kind == "hnsw":
            params["params"] = {"ef": max(self.config.ef_search, limit)}
        elif self.config.kind == "ivfpq":
            params["params"] = {"nprobe": self.config.nprobe}
        result = self.client.search(self.collection, data=[np.asarray(query, dtype=np.float32).tolist()], limit=limit,
                                    filter=where, output_fields=["id"], search_params=params)
        sign = 1.0 if self.config.metric == "ip" else -1.0  # Milvus's L2 is the squared distance, as faiss's
        return [(int(hit["id"]), sign * float(hit["distance"])) for hit in result[0]]

    # ----------------------------------------------------------------------------- writing
    def begin(self, generation: int) -> None:
        """Start the write of `generation`, first undoing what a killed writer left: rows it added, rows it marked
        deleted, a collection it was filling; and finishing a committed write's clean-up."""
        g = self.generation
        self.pending, self.replaced = generation, None
        for leftover in self.client.list_collections():
            if leftover != self.collection and (leftover == self.name or leftover.startswith(f"{self.name}__r")):
                logger.info("dropping Milvus collection %s (left by an interrupted write)", leftover)
                self.client.drop_collection(leftover)
        self.client.delete(self.collection, filter=f"added > {g} or deleted <= {g}")
        marked = f"deleted > {g} and deleted < {ALIVE}"
        while rows := self.client.query(self.collection, filter=marked, output_fields=FIELDS, limit=BATCH):
            self._upsert(rows, deleted=ALIVE)  # restored rows leave the filter: the next query gets the rest

    def _rows(self, ids: np.ndarray) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), BATCH):
            out += self.client.query(self.collection, ids=[int(x) for x in ids[i : i + BATCH]], output_fields=FIELDS)
        return out

    def _upsert(self, rows: list[dict[str, Any]], deleted: int) -> None:
        for i in range(0, len(rows), BATCH):
            self.client.upsert(self.collection, [{"id": r["id"], "vector": r["vector"], "added": r["added"],
                                                  "deleted": deleted} for r in rows[i : i + BATCH]])

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._insert(self.collection, vectors, ids)

    def _insert(self, collection: str, vectors: np.ndarray, ids: np.ndarray) -> None:
        if self.pending is None:
            raise RuntimeError("MilvusVectors: writes happen inside the store's transaction")
        for i in range(0, len(ids), BATCH):
            self.client.insert(collection, [{"id": int(x), "vector": v.tolist(), "added": self.pending, "deleted": ALIVE}
                                            for x, v in zip(ids[i : i + BATCH], np.asarray(vectors[i : i + BATCH], dtype=np.float32))])

    def remove(self, ids: np.ndarray) -> bool:
        rows = self._rows(np.asarray(ids))
        fresh = [r["id"] for r in rows if r["added"] == self.pending]  # added by this very write: never visible
        if fresh:
            self.client.delete(self.collection, ids=fresh)
        self._upsert([r for r in rows if r["added"] != self.pending], deleted=self.pending)
        return True

    def maybe_rebuild(self, all_vectors: Callable[[], tuple[np.ndarray, np.ndarray]], live: int, dead: int) -> list[str]:
        return []  # Milvus builds, compacts and re-trains its own index

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Every vector replaced (re-embedding, perhaps at another width): a new collection, switched to at the commit."""
        dim = vectors.shape[1] if len(vectors) else self.dim
        new = f"{self.name}__r{self.pending}"
        if self.client.has_collection(new):
            self.client.drop_collection(new)
        self._create_collection(new, dim)
        self._insert(new, vectors, ids)
        self.replaced, self.collection, self.dim = self.replaced or self.collection, new, dim

    def save(self, gen_dir: Path) -> None:
        self.client.flush(self.collection)  # durable before the manifest names the generation

    def committed(self) -> None:
        self.generation, self.pending = self.pending, None
        if self.replaced:
            self.client.drop_collection(self.replaced)
        else:
            self.client.delete(self.collection, filter=f"deleted <= {self.generation}")
        self.replaced = None

    def abort(self) -> None:
        self.pending = None  # the store reloads the committed state; the next `begin` undoes the rest

    def close(self, release: bool = False) -> None:
        self.client.close()
        if release and self.lite:
            release_lite(self.uri)

    def describe(self) -> dict[str, Any]:
        return {"backend": "milvus", "index_kind": self.kind, "milvus": {"name": self.name, "collection": self.collection}}
