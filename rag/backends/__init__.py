"""Where an index keeps its vectors: a `VectorBackend` by name (`index.backend`).

SQLite (`meta.py`) always holds the passages, their metadata, their vectors (the source of truth every backend
can be rebuilt from) and the BM25 table, one file per generation. A backend holds the vectors' search structure:

- `faiss`: a faiss index file in each generation directory (`faiss_vectors.py`), the embedded default;
- `milvus`: a Milvus collection (`milvus.py`): milvus-lite inside the index directory, or a Milvus server or
  cluster (`index.uri`) for corpora beyond one machine.

The store (`store.py`, `writes.py`) drives a backend through one write at a time: `begin(generation)`,
`add`/`remove`, `save(gen_dir)` before the manifest commit, `committed()` after it (`abort()` when the write
failed); readers `search` the generation they opened and never see a write that has not committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmadapt.errors import ConfigError


class VectorBackend(Protocol):
    files: tuple[str, ...]  # the files it writes into a generation directory (hashed by the manifest)

    @property
    def kind(self) -> str: ...  # flat / hnsw / ivfpq / auto (the search structure in use)

    @property
    def ntotal(self) -> int: ...  # vectors held for the open generation (tombstoned ones included)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> bool: ...  # False: cannot delete in place, the store keeps tombstones

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, excluded: np.ndarray | None,
               allowed_fraction: float) -> tuple[np.ndarray, np.ndarray]: ...  # scores [q, k], ids [q, k] (-1: none)

    def maybe_rebuild(self, ids_and_vectors: Any, live: int, dead: int) -> list[str]: ...  # reasons, if rebuilt

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...  # every vector replaced (re-embedding)

    def begin(self, generation: int) -> None: ...

    def save(self, gen_dir: Path) -> None: ...

    def committed(self) -> None: ...

    def abort(self) -> None: ...

    def close(self, release: bool = False) -> None: ...  # release: what holds the index directory (it may move)

    def describe(self) -> dict[str, Any]: ...  # what the manifest records about it (store.backend)


# Class-level hooks the store calls before a backend exists or after it is gone:
#   recorded_config(index_config) -> IndexConfig   the config as the manifest records it
#   owned: tuple[str, ...]                          entries it keeps inside the index directory besides gen-N/
#   retire(index_dir, index_config, store, before_move)  an index replaced by `rag build --overwrite`
BACKENDS = ("faiss", "milvus")


def backend_class(name: str) -> Any:
    """The VectorBackend class registered as `name` (imported on demand: pymilvus is an optional extra)."""
    if name == "faiss":
        from mmadapt.rag.backends.faiss_vectors import FaissVectors

        return FaissVectors
    if name == "milvus":
        from mmadapt.rag.backends.milvus import MilvusVectors

        return MilvusVectors
    raise ConfigError(f"index.backend {name!r}; valid: {', '.join(BACKENDS)}")
