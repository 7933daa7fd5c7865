"""A persistent RAG index directory: SQLite passages + a vector backend + one manifest, crash-safe on every write.

Layout::

    INDEX/manifest.json          the commit point: lineage (kind, config, hashed files, parents) and the
                                 store's own fields (format version, embedder, metric, counts, generation, backend)
    INDEX/gen-000007/meta.sqlite the current generation, never modified once committed
    INDEX/gen-000007/index.faiss (backend faiss; backend milvus keeps its vectors in a Milvus collection,
    INDEX/milvus.db/             in milvus-lite here unless index.uri names a Milvus server: rag/backends/milvus.py)

A write copies the current generation into a temp directory, changes the copy, renames it to
`gen-N+1` and then atomically replaces `manifest.json`. A process killed at any point leaves the
manifest naming the last complete generation, which is what the next open reads; leftovers are
removed by the next write. One file (not a lineage manifest beside a store manifest) because a single
rename must commit the data and the record of it together: two files could disagree after a crash.
Writers take an advisory lock (`INDEX/.lock`); readers never lock (committed files are immutable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmadapt.config import from_dict, to_dict
from mmadapt.errors import ConfigError, DataError
from mmadapt.io import atomic_directory, check_output_dir
from mmadapt.lineage import describe_input
from mmadapt.rag import manifest as index_manifest
from mmadapt.rag import meta
from mmadapt.rag.chunk import Chunk, ChunkConfig, Document
from mmadapt.rag.embed import EmbedderConfig, check_identity, load_embedder, local_weights
from mmadapt.rag.index import IndexConfig, exact_topk
from mmadapt.rag.ingest import IngestConfig
from mmadapt.rag.manifest import FORMAT_VERSION, MANIFEST, read_manifest
from mmadapt.rag.meta import Hit
from mmadapt.rag.backends import backend_class
from mmadapt.rag.writes import AddReport, IndexWrites, UpdateReport  # noqa: F401  (public here)

logger = logging.getLogger(__name__)



@dataclass
class RagConfig:
    """Everything an index is built with (recorded in its manifest; `mmadapt rag build --config`)."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)


class RagIndex(IndexWrites):
    """Passages with their embeddings: `add`, `delete`, `update`, `search`; open with `RagIndex.open(dir)`."""

    def __init__(self, path: Path, embedder: Any | None = None, final_path: Path | None = None) -> None:
        self.path = Path(path)
        self.final_path = Path(final_path or path)
        self._embedder = embedder
        self._embedder_given = embedder is not None  # else loaded from the recorded config (and reloaded with it)
        self.auto_reload = True  # searches first switch to a generation a writer committed since (one stat call)
        self._reload_lock = threading.Lock()
        self._load()
        if embedder is not None:
            check_identity(self.store["embedder"], embedder.identity, str(self.final_path))

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Any | None = None) -> RagIndex:
        """Open an index; `embedder` (an embedder or its config), if given, must be the one it was built with."""
        if isinstance(embedder, (EmbedderConfig, dict)):
            embedder = load_embedder(embedder)
        return cls(Path(path), embedder)

    @classmethod
    def create(
        cls, path: str | os.PathLike, config: RagConfig | None = None, embedder: Any | None = None,
        final_path: str | os.PathLike | None = None,
    ) -> RagIndex:
        """An empty index at a new (or empty) directory `path`."""
        config = config or RagConfig()
        path = Path(path)
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise DataError(f"{path} exists and is not empty; choose a new directory (or `rag build --overwrite`)")
        embedder = embedder or load_embedder(config.embedder)
        if isinstance(getattr(embedder, "config", None), EmbedderConfig):
            config = dataclasses.replace(config, embedder=embedder.config)  # record the embedder actually used
        if config.index.kind == "ivfpq" and config.index.pq_m and embedder.dim % config.index.pq_m:
            raise ConfigError(f"index.pq_m={config.index.pq_m} must divide the embedding dimension {embedder.dim}")
        lexical = meta.fts5_available()
        if not lexical:
            logger.warning("this Python's sqlite3 has no FTS5: lexical (BM25) and hybrid search will be unavailable")
        gen_dir = path / "gen-000001"
        gen_dir.mkdir(parents=True)
        conn = sqlite3.connect(gen_dir / "meta.sqlite")
        meta.create_schema(conn, lexical)
        conn.commit()
        conn.close()
        backend = backend_class(config.index.backend)
        config = dataclasses.replace(config, index=backend.recorded_config(config.index))
        vectors = backend.create(path, config.index, embedder.dim)
        vectors.save(gen_dir)
        parents = [describe_input(p) for p in local_weights(config.embedder)]  # hashed: part of the index's lineage
        store = {
            "format_version": FORMAT_VERSION, "generation": 1, "embedder": embedder.identity,
            "metric": config.index.metric, **vectors.describe(), "lexical": lexical,
            "counts": {"chunks": 0, "documents": 0, "sources": 0, "tombstones": 0, "vectors": 0},
        }
        index_manifest.write(path, Path(final_path or path), to_dict(config), parents, store, gen_dir,
                             ("meta.sqlite", *vectors.files))
        vectors.close()
        return cls(path, embedder, final_path)

    @classmethod
    def build(
        cls, path: str | os.PathLike, documents: list[Document], config: RagConfig | None = None,
        embedder: Any | None = None, overwrite: bool = False,
    ) -> tuple[RagIndex, AddReport]:
        """Create an index from documents in one atomic step: `path` appears complete, or not at all."""
        config = config or RagConfig()
        embedder = embedder or load_embedder(config.embedder)
        path = Path(path)
        if path.exists() and not overwrite:
            raise DataError(f"{path} exists; pass overwrite (`--overwrite`) to replace it, or `rag add` to extend it")
        # --overwrite replaces an earlier index only, never a directory holding files mmadapt did not write
        # (dot entries inside an index are its lock and killed writers' temp copies)
        own = {p.name for p in path.iterdir() if p.name.startswith(".")} if path.is_dir() else set()
        replaced = read_manifest(path) if overwrite and (path / MANIFEST).is_file() else None
        if replaced is not None:
            own.update(backend_class(replaced["store"].get("backend", "faiss")).owned)
        check_output_dir(path, index_manifest.KIND, overwrite, ignore=own)
        with atomic_directory(path, overwrite=True) as tmp:
            built = cls.create(tmp, config, embedder, final_path=path)
            report = built.add_documents(documents)
            built.close(release=True)  # before the directory moves (milvus-lite's server holds its old path)
            if replaced is not None:
                _retire_replaced(path, replaced, before_move=True)
        if replaced is not None:
            _retire_replaced(path, replaced, before_move=False)
        return cls(path, embedder), report

    def _signature(self) -> tuple[int, int, int]:
        st = (self.path / MANIFEST).stat()  # a commit replaces the file: a new inode, time and usually size
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Switch to the newest committed generation if a writer committed one since this index was read
        (cheap when nothing changed: one stat of manifest.json); True when it switched."""
        try:
            signature = self._signature()
        except OSError:
            return False
        if signature == self._seen:
            return False
        with self._reload_lock:
            if read_manifest(self.path)["store"]["generation"] == self.store["generation"]:
                self._seen = signature
                return False
            identity = self.store["embedder"]
            self._load()  # the previous connection is left to the garbage collector: a search may still use it
            if self.store["embedder"] != identity:
                if self._embedder_given:
                    raise DataError(f"{self.final_path}: re-embedded with {self.store['embedder']['name']!r} since it "
                                    f"was opened with {identity['name']!r}; open it again with the new embedder")
                self._embedder = None  # loaded again, from the newly recorded config, on the next query
            logger.info("%s: now reading generation %d", self.final_path, self.store["generation"])
            return True

    def _refresh(self) -> None:
        if self.auto_reload:
            self.reload()

    def _load(self, attempts: int = 5) -> None:
        for _ in range(attempts):
            with contextlib.suppress(OSError):
                self._seen = self._signature()  # taken before reading: a commit in between is seen next time
            self.manifest = read_manifest(self.path)
            self.store = self.manifest["store"]
            gen_dir = self.path / f"gen-{self.store['generation']:06d}"
            conn = None
            try:
                index_manifest.check_sizes(self.path, self.store)
                backend = backend_class(self.store.get("backend", "faiss"))
                vectors = backend.load(self.path, self.store, self._config().index, self.dim, gen_dir)
                index_manifest.check_checksums(self.path, self.manifest, gen_dir, backend.files)  # changed at its size
                conn = meta.connect_readonly(str(gen_dir / "meta.sqlite"))
                self.tombstones = meta.tombstones(conn)
            except (OSError, RuntimeError, sqlite3.Error) as e:  # faiss raises RuntimeError for unreadable files
                if conn is not None:
                    conn.close()
                if read_manifest(self.path)["store"]["generation"] != self.store["generation"]:
                    continue  # a writer committed a newer generation and removed this one meanwhile: read again
                if isinstance(e, FileNotFoundError):
                    raise DataError(f"{self.path}: generation {gen_dir.name} named by the manifest is missing") from None
                raise DataError(f"{gen_dir}: unreadable ({e}); the index is damaged (restore it or rebuild with "
                                "`mmadapt rag build`)") from e
            # the previous backend is left to the garbage collector, like the previous connection: a search in
            # another thread may still be using it
            self.conn, self.gen_dir, self.vectors = conn, gen_dir, vectors
            return
        raise DataError(f"{self.path}: the index kept changing while it was opened ({attempts} tries)")

    def _config(self) -> RagConfig:
        return from_dict(RagConfig, self.manifest.get("config", {}), path="manifest.config")

    def _close(self) -> None:
        self.conn.close()

    def close(self, release: bool = False) -> None:
        """Close the SQLite connection and the vector backend; `release`: also what holds the index directory (this
        process's milvus-lite server), so another process, or this directory under a new name, can open it."""
        self._close()
        self.vectors.close(release)

    @property
    def config(self) -> RagConfig:
        return self._config()

    @property
    def embedder(self) -> Any:
        """The embedder the index was built with (loaded on first use from the recorded config)."""
        if self._embedder is None:
            self._embedder = load_embedder(self.config.embedder)
            check_identity(self.store["embedder"], self._embedder.identity, str(self.final_path))
        return self._embedder

    def __len__(self) -> int:
        return int(self.store["counts"]["chunks"])

    @property
    def dim(self) -> int:
        return int(self.store["embedder"]["dim"])


    def add_documents(self, documents: list[Document], replace: bool = False) -> AddReport:
        """Chunk, embed and add documents; `replace`: first remove what their sources held (an updated file)."""
        report = AddReport()
        images = [d for d in documents if d.modality == "image"]
        if images and "image" not in self.embedder.modalities:
            report.skipped += [(d.source, "an image needs an image embedder (embedder.type: open_clip)") for d in images]
            documents = [d for d in documents if d.modality != "image"]
        sources = self.matching_sources({d.source for d in documents}) if replace else []
        return self.add_chunks(self.chunk(documents), replace_sources=sources, report=report)

    def matching_sources(self, sources: set[str]) -> list[str]:
        """The indexed sources that are the same files as `sources` (compared by resolved path, so `small.jsonl`
        and `$PWD/small.jsonl` match), with `sources` themselves."""
        wanted = {_resolved(s) for s in sources}
        indexed = [r[0] for r in self.conn.execute("SELECT DISTINCT source FROM chunks")]
        return sorted(set(sources) | {s for s in indexed if _resolved(s) in wanted})

    def add_chunks(
        self, chunks: list[Chunk], vectors: np.ndarray | None = None, replace_sources: list[str] = (),
        replace_ids: bool = False, report: AddReport | None = None,
    ) -> AddReport:
        """Add passages (embedded here unless `vectors` [n, dim] are given) in one committed write."""
        report = report or AddReport()
        if not replace_sources and not replace_ids:  # embed only what is new (duplicates are common on re-ingest)
            keep = self._dedup(self.conn, chunks, report)
            chunks = [chunks[i] for i in keep]
            vectors = vectors[keep] if vectors is not None else None
            if not chunks:
                return report  # nothing new: no generation is written
        if vectors is None:
            vectors = self.embed_chunks(chunks)
        if vectors.shape != (len(chunks), self.dim):
            raise DataError(f"vectors have shape {vectors.shape}, expected ({len(chunks)}, {self.dim})")
        with self._transaction() as conn:
            rows = meta.ids_for(conn, sources=replace_sources, chunk_ids=[c.chunk_id for c in chunks] if replace_ids else ())
            self._delete_rows(conn, rows)
            keep = self._dedup(conn, chunks, report)
            ids = meta.insert(conn, [chunks[i] for i in keep], vectors[keep])
            self.vectors.add(vectors[keep], ids)
            report.added = len(keep)
        logger.info("added %d passages (%d skipped) to %s", report.added, len(report.skipped), self.final_path)
        return report

    def update(self, chunks: list[Chunk], vectors: np.ndarray | None = None) -> AddReport:
        """Replace passages by chunk id (new text, metadata or vector); ids not present yet are added."""
        return self.add_chunks(chunks, vectors, replace_ids=True)


    def delete(self, chunk_ids: list[str] = (), sources: list[str] = (), doc_ids: list[str] = ()) -> int:
        """Delete passages by chunk id, source file or document id; returns how many were deleted."""
        rows = meta.ids_for(self.conn, chunk_ids, sources, doc_ids)
        if not len(rows):
            return 0
        with self._transaction() as conn:
            rows = meta.ids_for(conn, chunk_ids, sources, doc_ids)
            self._delete_rows(conn, rows)
        return len(rows)

    # ----------------------------------------------------------------------------- reading
    def search(self, queries: np.ndarray, k: int = 5, filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Dense top-k for each query vector [q, dim] (higher score is better), restricted by metadata filters."""
        self._refresh()
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise DataError(f"query vectors have dimension {queries.shape[1]}, the index holds {self.dim}")
        cfg = self.config.index
        live = max(len(self), 1)
        allowed = meta.filtered_ids(self.conn, filters) if filters else None
        kind = self.vectors.kind
        fetch = k * cfg.refine if kind == "ivfpq" and cfg.refine and cfg.backend == "faiss" else k
        if allowed is not None and (len(allowed) == 0 or (kind != "flat" and len(allowed) <= cfg.exact_filter_max)):
            ids, vectors = meta.vectors_for(self.conn, allowed, self.dim)
            scores, found = exact_topk(queries, vectors, ids, k, cfg.metric)
        else:
            fraction = len(allowed) / live if allowed is not None else 1.0
            scores, found = self.vectors.search(queries, fetch, allowed, self.tombstones, fraction)
            if fetch > k:  # IVF-PQ: re-score the candidates with the exact vectors
                rescored = []
                for query, candidates in zip(queries, found):
                    cand_ids, cand_vectors = meta.vectors_for(self.conn, candidates, self.dim)
                    rescored.append(exact_topk(query[None], cand_vectors, cand_ids, k, cfg.metric))
                scores = np.concatenate([s for s, _ in rescored])  # [q, k]
                found = np.concatenate([f for _, f in rescored])
            if allowed is not None:  # a graph or a post-filtered search may find fewer than exist: score those exactly
                short = [q for q, row in enumerate(found) if (row >= 0).sum() < min(k, len(allowed))]
                if short:
                    ids, vectors = meta.vectors_for(self.conn, allowed, self.dim)
                    scores[short], found[short] = exact_topk(queries[short], vectors, ids, k, cfg.metric)
        return [meta.hits_for(self.conn, [int(i) for i in row if i >= 0], [float(s) for s, i in zip(srow, row) if i >= 0])
                for srow, row in zip(scores, found)]

    def lexical(self, query: str, k: int = 5, filters: dict[str, Any] | None = None) -> list[Hit]:
        """BM25 top-k over the passages' text."""
        self._refresh()
        if not self.store.get("lexical"):
            raise ConfigError(f"{self.final_path}: built without an FTS5 table (this sqlite3 lacks FTS5); use dense search")
        ids, scores = meta.lexical(self.conn, query, k, filters)
        return meta.hits_for(self.conn, ids, scores)

    def get(self, chunk_ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> list[Hit]:
        """Passages by chunk id or document id (score 0), in index order."""
        self._refresh()
        rows = meta.ids_for(self.conn, chunk_ids=chunk_ids, doc_ids=doc_ids)
        return meta.hits_for(self.conn, [int(r) for r in rows], [0.0] * len(rows))

    def chunk_ids(self) -> list[str]:
        self._refresh()
        return [r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks ORDER BY id")]

    def check_vectors(self) -> list[str]:
        """Problems found comparing the vector backend with the passages: one vector per live passage (plus faiss
        HNSW's deleted ones awaiting compaction). `rag info --verify` adds this to the file hashes."""
        held, live, dead = self.vectors.ntotal, len(self), int(self.store["counts"]["tombstones"])
        if held == live + dead:
            return []
        where = self.store.get("backend", "faiss")
        return [f"{self.final_path}: the {where} vectors hold {held} entries for {live} passages"
                + (f" and {dead} deleted ones awaiting compaction" if dead else "")
                + "; rebuild the index (`mmadapt rag build --overwrite`)"]

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.final_path), "generation": self.store["generation"], "kind": self.store["index_kind"],
                "metric": self.store["metric"], "backend": self.store.get("backend", "faiss"), "embedder": self.store["embedder"], **self.store["counts"]}


def _retire_replaced(path: Path, manifest: dict[str, Any], before_move: bool) -> None:
    index_config = from_dict(IndexConfig, manifest.get("config", {}).get("index", {}), path="manifest.config.index")
    backend_class(manifest["store"].get("backend", "faiss")).retire(path, index_config, manifest["store"], before_move)


def _resolved(source: str) -> str:
    try:
        return str(Path(source).resolve())
    except (OSError, RuntimeError):
        return source
