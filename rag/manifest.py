"""The RAG index manifest (the commit point of every write), its validation on open, and the writers' lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from mmadapt import __version__
from mmadapt.errors import DataError
from mmadapt.io import atomic_write_json, contained_path, sha256_file

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1
KIND = "rag_index"
MANIFEST = "manifest.json"


def fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock for writers (filelock: POSIX and Windows alike); readers never take it."""
    from filelock import FileLock

    with FileLock(str(directory / ".lock")):
        yield


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an index directory, validated: a clear DataError when it is not a readable index.

    An index is data, never code: its embedder's `trust_remote_code` is forced off here (someone who trusts
    the embedder's code passes their own embedder config when opening the index), and every file it names
    must lie inside the index directory."""
    file = path / MANIFEST
    if not file.is_file():
        raise DataError(f"{path}: not a RAG index (no {MANIFEST}); build one with `mmadapt rag build`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{file}: unreadable manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{file}: expected a JSON object")
    store = manifest.get("store") if manifest.get("kind") == KIND else None
    if not isinstance(store, dict):
        raise DataError(f"{path}: manifest kind is {manifest.get('kind')!r}, not a RAG index ({KIND})")
    version = store.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "upgrade mmadapt to read it" if newer else "rebuild it with `mmadapt rag build`"
        raise DataError(f"{path}: index format version {version}, this mmadapt {__version__} reads version {FORMAT_VERSION}; {hint}")
    _check_fields(file, manifest, store)
    embedder = manifest.get("config", {}).get("embedder")
    if isinstance(embedder, dict) and embedder.get("trust_remote_code"):
        logger.warning("%s: the index's embedder sets trust_remote_code: ignored (an index never enables remote "
                       "code; open it with your own embedder config if you trust that code)", file)
        embedder["trust_remote_code"] = False
    return manifest


def _check_fields(file: Path, manifest: dict[str, Any], store: dict[str, Any]) -> None:
    """Types of the fields a reader relies on, and every recorded path inside the index directory."""
    generation = store.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise DataError(f"{file}: store.generation must be a positive integer, got {generation!r}")
    embedder = store.get("embedder")
    if not isinstance(embedder, dict) or not isinstance(embedder.get("dim"), int) or not embedder.get("name"):
        raise DataError(f"{file}: store.embedder must record the embedder ({{type, name, dim}}), got {embedder!r}")
    if not isinstance(manifest.get("config", {}), dict):
        raise DataError(f"{file}: config must be a mapping")
    for field in ("files", "sizes"):
        entries = manifest.get(field, {}) if field == "files" else store.get(field, {})
        if not isinstance(entries, dict):
            raise DataError(f"{file}: {field} must map file names inside the index to values")
        for rel in entries:
            contained_path(file.parent, rel, f"{file}: {field}", DataError)
    if not all(isinstance(v, int) for v in store.get("sizes", {}).values()):
        raise DataError(f"{file}: store.sizes must map file names to byte counts")


def check_sizes(path: Path, store: dict[str, Any]) -> None:
    """Every file the manifest sized is there at that size (FileNotFoundError / DataError otherwise)."""
    for rel, size in store.get("sizes", {}).items():
        file = path / rel
        if not file.is_file():
            raise FileNotFoundError(file)
        if file.stat().st_size != size:
            raise DataError(f"{file}: {file.stat().st_size} bytes, the manifest says {size}; the index is damaged "
                            "(restore it or rebuild with `mmadapt rag build`)")


def check_checksums(path: Path, manifest: dict[str, Any], gen_dir: Path, names: tuple[str, ...]) -> None:
    """Re-hash the generation's `names` (the vector backend's files) against the SHA-256 recorded at commit: a file corrupted at the same size
    (which the size check passes and faiss may read without error) is refused on open. Cost: one SHA-256 pass,
    measured by benchmarks/rag_open_check.py. meta.sqlite is left to SQLite's own checks (its hash is recorded
    too, but a reader never rewrites index.faiss while SQLite may touch its file's header on close)."""
    for name in names:
        rel = f"{gen_dir.name}/{name}"
        recorded = manifest.get("files", {}).get(rel)
        if recorded is not None and sha256_file(path / rel) != recorded:
            raise DataError(f"{path / rel}: SHA-256 differs from the one {MANIFEST} recorded when it was written; the "
                            "index is damaged (restore it or rebuild with `mmadapt rag build`)")


def write(
    path: Path, final_path: Path, config: dict[str, Any], parents: list[dict[str, Any]], store: dict[str, Any],
    gen_dir: Path, names: tuple[str, ...], created: str | None = None,
) -> None:
    """Commit: one atomic replace of manifest.json names the new generation, its files' checksums and sizes."""
    files = {f"{gen_dir.name}/{name}": sha256_file(gen_dir / name) for name in names}
    store = {**store, "sizes": {rel: (path / rel).stat().st_size for rel in files}}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path / MANIFEST, {
        "kind": KIND, "mmadapt_version": __version__, "created": created or now, "updated": now,
        "path": str(final_path), "config": config, "files": files, "parents": parents, "store": store,
    })
