"""manifest.json: where every directory mmadapt writes came from (kind, config, hashed inputs, parents).

A manifest embeds the manifests of its inputs as `parents`, so one file tells the whole chain
(base -> SFT -> DPO -> merge -> edit) and `verify` can re-hash every weight file it names.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from mmadapt import __version__
from mmadapt.io import atomic_write_json, sha256_file

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".faiss", ".sqlite", ".gguf")


def weight_files(directory: str | Path) -> list[Path]:
    """The files whose bytes define a model or index (hashed in manifests), sorted, relative to `directory`."""
    directory = Path(directory)
    return sorted(
        p.relative_to(directory)
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def hash_files(directory: str | Path) -> dict[str, str]:
    directory = Path(directory)
    return {str(rel): sha256_file(directory / rel) for rel in weight_files(directory)}


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def describe_input(path: str | Path) -> dict[str, Any]:
    """An input's manifest if it has one, else a synthesised one (e.g. a plain HF model directory or hub id)."""
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        return {**manifest, "path": str(path)}
    if path.is_dir():
        return {"kind": "external", "path": str(path), "files": hash_files(path), "parents": []}
    if path.is_file():
        return {"kind": "external", "path": str(path), "files": {path.name: sha256_file(path)}, "parents": []}
    return {"kind": "external", "path": str(path), "files": {}, "parents": [], "note": "not a local path (hub id?)"}


def write_manifest(
    directory: str | Path,
    kind: str,
    config: dict[str, Any] | None = None,
    inputs: list[str | Path] | None = None,
    extra: dict[str, Any] | None = None,
    final_path: str | Path | None = None,
) -> dict[str, Any]:
    """Write `directory/manifest.json` hashing the directory's weight files and embedding the inputs' manifests.

    `final_path` is where the directory will live after an atomic rename (recorded as `path`).
    """
    manifest = {
        "kind": kind,
        "mmadapt_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "path": str(final_path or directory),
        "config": config or {},
        "files": hash_files(directory),
        "parents": [describe_input(p) for p in (inputs or [])],
        **(extra or {}),
    }
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def verify(directory: str | Path) -> list[str]:
    """Re-hash the files every manifest in the chain names; return the problems (empty: all match)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory}: no {MANIFEST}"]
    problems: list[str] = []

    def check(node: dict[str, Any], root: Path) -> None:
        for rel, digest in node.get("files", {}).items():
            path = root / rel
            if not path.is_file():
                problems.append(f"{path}: missing (recorded in {node.get('kind')} manifest)")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: SHA-256 differs from the manifest")
        for parent in node.get("parents", []):
            parent_root = Path(parent.get("path", ""))
            if parent_root.exists():
                check(parent, parent_root if parent_root.is_dir() else parent_root.parent)
            else:
                problems.append(f"{parent_root}: input no longer present (cannot re-hash)")

    check(manifest, Path(directory))
    return problems


def format_chain(manifest: dict[str, Any], indent: int = 0) -> str:
    """The lineage as an indented tree, the directory first and its inputs below."""
    pad = "  " * indent
    files = manifest.get("files", {})
    short = ", ".join(f"{k} {v[:12]}" for k, v in list(files.items())[:3]) + (" ..." if len(files) > 3 else "")
    lines = [f"{pad}{'└─ ' if indent else ''}{manifest.get('kind', '?')}: {manifest.get('path', '?')}"
             f"  [{manifest.get('created', '')}]" + (f"  {short}" if short else "")]
    for parent in manifest.get("parents", []):
        lines.append(format_chain(parent, indent + 1))
    return "\n".join(lines)
