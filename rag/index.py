"""faiss indices: exact (Flat), HNSW and IVF-PQ, chosen in the config or by size; inner product or L2.

Pure functions over faiss objects and numpy arrays; persistence and metadata live in `store.py`.
Every index is wrapped in `IndexIDMap2`, so faiss ids are the SQLite row ids of the passages.
Scores are "higher is better": the inner product, or minus the squared L2 distance.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)
Kind = Literal["flat", "hnsw", "ivfpq"]


@dataclass
class IndexConfig:
    """The vector index: backend, kind, metric and the knobs of each kind (defaults measured in benchmarks/rag_index.py)."""

    backend: Literal["faiss", "milvus"] = "faiss"  # where vectors are searched (rag/backends/): faiss files or Milvus
    uri: str | None = None  # milvus: a server (http://HOST:19530) or a milvus-lite dir (*.db); None: INDEX/milvus.db
    collection: str | None = None  # milvus: the collection's name (None: mmadapt_<random>)
    kind: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"
    metric: Literal["ip", "l2"] = "ip"  # ip on normalised embeddings is cosine similarity
    hnsw_m: int = 32  # graph degree: more is better recall, more memory
    ef_construction: int = 80
    ef_search: int = 128  # raised automatically to at least k (and more under selective filters)
    nlist: int | None = None  # IVF cells; None: 4 * sqrt(n), at most n / 39
    nprobe: int = 64  # IVF cells visited per query
    pq_m: int | None = None  # PQ sub-quantizers; None: dim / 4 (must divide dim)
    pq_bits: int = 8
    refine: int = 4  # IVF-PQ: re-score k * refine candidates with the exact vectors (0: off)
    auto_flat_max: int = 50_000  # auto: exact search up to this many passages
    auto_hnsw_max: int = 2_000_000  # auto: HNSW up to this many, IVF-PQ (compressed) beyond
    exact_filter_max: int = 20_000  # a filter matching at most this many passages is scored exactly
    compact_ratio: float = 0.2  # HNSW cannot delete in place: rebuild when this fraction is deleted
    retrain_growth: float = 4.0  # IVF-PQ: retrain codebooks once the index outgrows its training set this much

    def __post_init__(self) -> None:
        if self.backend == "faiss" and (self.uri is not None or self.collection is not None):
            raise ValueError("index.uri and index.collection apply to index.backend: milvus")
        for key in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "pq_bits"):
            if getattr(self, key) < 1:
                raise ValueError(f"index.{key} must be >= 1, got {getattr(self, key)}")
        if self.refine < 0:
            raise ValueError(f"index.refine must be >= 0, got {self.refine}")
        if not 0 < self.compact_ratio <= 1:
            raise ValueError(f"index.compact_ratio must be in (0, 1], got {self.compact_ratio}")


def resolve_kind(config: IndexConfig, n: int) -> Kind:
    """The kind an index of `n` passages should be: the configured one, or chosen by size."""
    if config.kind != "auto":
        return config.kind
    if n <= config.auto_flat_max:
        return "flat"
    return "hnsw" if n <= config.auto_hnsw_max else "ivfpq"


def _faiss() -> Any:
    if "faiss" not in sys.modules:
        # faiss's loader logs at INFO each CPU-specific build it fails to find (AVX-512, AVX2): noise, not news
        loader = logging.getLogger("faiss.loader")
        if loader.level == logging.NOTSET:
            loader.setLevel(logging.WARNING)
    import faiss

    return faiss


def _metric(metric: str) -> int:
    faiss = _faiss()
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


MIN_POINTS = 39  # faiss's k-means warns below this many training points per centroid


def ivfpq_shape(n: int, dim: int, config: IndexConfig) -> tuple[int, int, int]:
    """(nlist, pq_m, pq_bits) for `n` training vectors of width `dim`: cells and codebook sizes are capped so that
    every centroid gets >= 39 training points (faiss's k-means otherwise warns once per sub-quantizer)."""
    nlist = config.nlist or int(4 * math.sqrt(max(n, 1)))
    nlist = max(1, min(nlist, n // MIN_POINTS or 1))
    m = config.pq_m or max(1, dim // 4)
    if dim % m:
        raise ConfigError(f"index.pq_m={m} must divide the embedding dimension {dim}")
    return nlist, m, config.pq_bits  # fewer code bits on a small sample cost recall (measured): kept as configured


def min_train_size(config: IndexConfig) -> int:
    """IVF-PQ needs at least 2**pq_bits vectors to train its codebooks."""
    return 2**config.pq_bits


def new_index(kind: Kind, dim: int, config: IndexConfig, train: np.ndarray | None = None) -> Any:
    """An empty IndexIDMap2 of `kind`; IVF-PQ is trained on `train` [n, dim] (required)."""
    faiss = _faiss()
    metric = _metric(config.metric)
    if kind == "flat":
        inner = faiss.IndexFlat(dim, metric)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
        inner.hnsw.efConstruction = config.ef_construction
        inner.hnsw.efSearch = config.ef_search
    elif kind == "ivfpq":
        if train is None or len(train) < min_train_size(config):
            have = 0 if train is None else len(train)
            raise ConfigError(f"index.kind ivfpq needs at least {min_train_size(config)} passages to train "
                              f"its codebooks, got {have}; use kind flat, hnsw or auto")
        nlist, m, bits = ivfpq_shape(len(train), dim, config)
        if config.nlist and nlist < config.nlist:
            logger.info("IVF-PQ: %d cells instead of the configured %d: %d training vectors give each cell the %d "
                        "faiss's k-means needs; the index retrains as it grows (index.retrain_growth)",
                        nlist, config.nlist, len(train), MIN_POINTS)
        logger.info("IVF-PQ trained on %d vectors: %d cells (%s), %d sub-quantizers of %d bits", len(train), nlist,
                    "configured" if config.nlist == nlist else f"sized from the {len(train)} training vectors", m, bits)
        quantizer = faiss.IndexFlat(dim, metric)
        inner = faiss.IndexIVFPQ(quantizer, dim, nlist, m, bits, metric)
        codes = 2**bits
        if len(train) < codes * MIN_POINTS:
            # Each of the m sub-quantizers' k-means would print faiss's "please provide at least N training points"
            # (m lines to stderr, e.g. 96); fewer code bits cost recall (measured), so the codebooks keep their size,
            # this one line says so and the index retrains its codebooks once it grows (index.retrain_growth).
            inner.pq.cp.min_points_per_centroid = max(1, len(train) // codes)
            logger.info("IVF-PQ codebooks: %d codes per sub-quantizer trained on %d vectors (%.0f each; %d would be "
                        "ideal)", codes, len(train), len(train) / codes, MIN_POINTS)
        inner.train(np.ascontiguousarray(train, dtype=np.float32))
        inner.nprobe = config.nprobe
    else:
        raise ConfigError(f"index.kind {kind!r}; valid: auto, flat, hnsw, ivfpq")
    return faiss.IndexIDMap2(inner)  # the Python wrapper keeps `inner` alive with it


def kind_of(index: Any) -> Kind:
    faiss = _faiss()
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivfpq"
    return "flat"


def add(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add [n, dim] vectors under int64 ids."""
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove(index: Any, ids: np.ndarray) -> bool:
    """Remove ids in place; False for HNSW, which cannot (the store keeps them as tombstones)."""
    if kind_of(index) == "hnsw":
        return False
    if len(ids):
        index.remove_ids(_faiss().IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
    return True


def search(
    index: Any,
    queries: np.ndarray,
    k: int,
    config: IndexConfig,
    allowed: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    allowed_fraction: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [q, k], ids [q, k]; id -1 where fewer than k exist), optionally restricted to `allowed`
    ids and never returning `excluded` ids."""
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    selector = None
    keep: list[Any] = []  # selectors must outlive the search call
    if allowed is not None:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        keep.append(selector)
    if excluded is not None and len(excluded):
        batch = faiss.IDSelectorBatch(np.ascontiguousarray(excluded, dtype=np.int64))
        keep.append(batch)
        selector = faiss.IDSelectorNot(batch) if selector is None else faiss.IDSelectorAnd(selector, faiss.IDSelectorNot(batch))
        keep.append(selector)
    kind = kind_of(index)
    if kind == "hnsw":
        # A selective filter leaves few allowed nodes among those visited: widen the beam accordingly.
        ef = max(config.ef_search, k, int(math.ceil(2 * k / max(allowed_fraction, 1e-6))))
        params = faiss.SearchParametersHNSW(efSearch=min(ef, max(index.ntotal, 1)))
    elif kind == "ivfpq":
        params = faiss.SearchParametersIVF(nprobe=config.nprobe)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    distances, ids = index.search(queries, k, params=params)
    return to_scores(distances, config.metric, ids), ids


def to_scores(distances: np.ndarray, metric: str, ids: np.ndarray | None = None) -> np.ndarray:
    """faiss distances -> higher-is-better scores (missing results get -inf)."""
    scores = distances.astype(np.float32) if metric == "ip" else -distances.astype(np.float32)
    if ids is not None:
        scores = np.where(ids < 0, -np.inf, scores)
    return scores


def exact_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """[q, d] x [n, d] -> [q, n] scores by the index's metric."""
    sims = queries @ vectors.T  # [q, n]
    if metric == "ip":
        return sims
    return -(np.sum(queries**2, axis=1, keepdims=True) - 2 * sims + np.sum(vectors**2, axis=1)[None, :])


def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of `queries` among (`vectors`, `ids`), padded with (-inf, -1) like faiss."""
    q = len(queries)
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_ids = np.full((q, k), -1, dtype=np.int64)
    if len(ids) == 0:
        return out_scores, out_ids
    scores = exact_scores(queries.astype(np.float32), vectors.astype(np.float32), metric)  # [q, n]
    take = min(k, len(ids))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :take]  # [q, take]
    out_scores[:, :take] = np.take_along_axis(scores, top, axis=1)
    out_ids[:, :take] = ids[top]
    return out_scores, out_ids


def write(index: Any, path: str) -> None:
    _faiss().write_index(index, path)


def read(path: str) -> Any:
    return _faiss().read_index(path)
