"""The embedded default backend: one faiss index file per generation (`gen-N/index.faiss`), loaded in memory.

faiss ids are the SQLite row ids of the passages (`index.py` wraps every index in IndexIDMap2). HNSW cannot
delete in place: its deleted ids stay as tombstones until a rebuild compacts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmadapt.rag import index as vindex
from mmadapt.rag.index import IndexConfig

INDEX_FILE = "index.faiss"


class FaissVectors:
    files = (INDEX_FILE,)
    owned: tuple[str, ...] = ()  # everything it writes lives in the generation directories

    @staticmethod
    def recorded_config(config: IndexConfig) -> IndexConfig:
        return config

    @staticmethod
    def retire(index_dir: Path, config: IndexConfig, store: dict[str, Any], before_move: bool) -> None:
        pass  # its files went with the replaced directory

    def __init__(self, faiss_index: Any, config: IndexConfig, dim: int, trained_on: int = 0) -> None:
        self.faiss, self.config, self.dim, self.trained_on = faiss_index, config, dim, trained_on

    @classmethod
    def create(cls, index_dir: Path, config: IndexConfig, dim: int) -> FaissVectors:
        start_kind = vindex.resolve_kind(config, 0)  # IVF-PQ waits for enough passages to train on
        return cls(vindex.new_index("flat" if start_kind == "ivfpq" else start_kind, dim, config), config, dim)

    @classmethod
    def load(cls, index_dir: Path, store: dict[str, Any], config: IndexConfig, dim: int, gen_dir: Path) -> FaissVectors:
        return cls(vindex.read(str(gen_dir / INDEX_FILE)), config, dim, int(store.get("trained_on", 0)))

    @property
    def kind(self) -> str:
        return vindex.kind_of(self.faiss)

    @property
    def ntotal(self) -> int:
        return int(self.faiss.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vindex.add(self.faiss, vectors, ids)

    def remove(self, ids: np.ndarray) -> bool:
        return vindex.remove(self.faiss, ids)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, excluded: np.ndarray | None,
               allowed_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        return vindex.search(self.faiss, queries, k, self.config, allowed, excluded, allowed_fraction)

    def maybe_rebuild(self, all_vectors: Callable[[], tuple[np.ndarray, np.ndarray]], live: int, dead: int) -> list[str]:
        """Rebuild from the stored vectors when the kind should change with size, HNSW holds many tombstones, or
        IVF-PQ has outgrown the set its codebooks were trained on; the reasons, when it did."""
        cfg, kind = self.config, self.kind
        want = self._kind_for(live)
        reasons = []
        if want != kind:
            reasons.append(f"{kind} -> {want} for {live} passages")
        if dead and dead > cfg.compact_ratio * max(self.ntotal, 1):
            reasons.append(f"compacting {dead} deleted vectors")
        if kind == "ivfpq" and want == kind and live > cfg.retrain_growth * max(self.trained_on, 1):
            reasons.append(f"retraining IVF-PQ ({self.trained_on} -> {live} passages)")
        if reasons:
            self.rebuild(*all_vectors())
        return reasons

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        kind = self._kind_for(len(ids))
        self.dim = vectors.shape[1] if len(vectors) else self.dim
        self.faiss = vindex.new_index(kind, self.dim, self.config, train=training_sample(vectors) if kind == "ivfpq" else None)
        vindex.add(self.faiss, vectors, ids)
        self.trained_on = len(ids) if kind == "ivfpq" else 0

    def _kind_for(self, live: int) -> str:
        want = vindex.resolve_kind(self.config, live)
        return "flat" if want == "ivfpq" and live < vindex.min_train_size(self.config) else want  # exact until trainable

    def begin(self, generation: int) -> None:
        pass  # the in-memory index is the write's copy; a failed write is undone by reloading the committed file

    def save(self, gen_dir: Path) -> None:
        vindex.write(self.faiss, str(gen_dir / INDEX_FILE))

    def committed(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self, release: bool = False) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"backend": "faiss", "index_kind": self.kind, "trained_on": self.trained_on}


def training_sample(vectors: np.ndarray, limit: int = 200_000, seed: int = 0) -> np.ndarray:
    """At most `limit` rows, drawn reproducibly (codebooks need a sample, not the whole corpus)."""
    if len(vectors) <= limit:
        return vectors
    return vectors[np.random.default_rng(seed).choice(len(vectors), limit, replace=False)]
