"""manifest.json: where every directory mmadapt writes came from (kind, config, hashed inputs, parents).

A manifest embeds the manifests of its inputs as `parents`, so one file tells the whole chain
(base -> SFT -> DPO -> merge -> edit) and `verify` can re-hash every weight file it names.
"""

from __future__ import annotations

import datetime as _dt
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mmadapt import __version__
from mmadapt.errors import DataError
from mmadapt.io import atomic_write_json, contained_path, read_json, sha256_file

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".faiss", ".sqlite", ".gguf")
# The files that fix a tokenizer's vocabulary: hashed under `tokenizer_files`, so a swapped tokenizer (same
# weights, other ids) is refused on load. Checked only where recorded: older manifests still load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")


def tokenizer_hashes(directory: str | Path) -> dict[str, str]:
    directory = Path(directory)
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.name in TOKENIZER_FILES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(directory).parts)}


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
    """The manifest of `directory` (None when it has none); a garbled one is a DataError naming the file."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path, "a manifest", DataError)
    problem = _shape_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem}")
    return manifest


def _shape_problem(node: Any, where: str = "") -> str | None:
    """What is wrong with a manifest's structure (kind: str, files: {str: str}, parents: [manifests]), if anything."""
    if not isinstance(node, dict):
        return f"{where or 'the manifest'} must be a JSON object"
    if not isinstance(node.get("kind", ""), str):
        return f"{where}kind must be a string"
    files = node.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return f"{where}files must map relative file names to SHA-256 strings"
    parents = node.get("parents", [])
    if not isinstance(parents, list):
        return f"{where}parents must be a list of manifests"
    for i, parent in enumerate(parents):
        problem = _shape_problem(parent, f"{where}parents[{i}].")
        if problem:
            return problem
    return None


def check_complete(directory: str | Path, kind: str = "", parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Refuse to load a directory whose manifest is missing (an interrupted write) or whose weight files differ
    from those it records (a mix of two writes, or a swapped file); returns the manifest.

    Checked: the weight files under the top-level entries `parts` (None: all), i.e. those the caller will load;
    each recorded one is re-hashed (SHA-256, ~1.6 GB/s per core: benchmarks/load_verify.py), and one present but
    not recorded (e.g. a shard of another write) is refused too.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"{directory}: no {MANIFEST}, so it is not a complete mmadapt output (an interrupted write, "
                        f"or not written by mmadapt); {kind or 'load'} refuses it: re-create it, or if you trust these "
                        f"files write a manifest with mmadapt.lineage.write_manifest")
    def wanted(rel: str | Path) -> bool:
        return parts is None or Path(rel).parts[:1] in [(part,) for part in parts]

    recorded = {k: v for k, v in manifest.get("files", {}).items() if wanted(k)}
    present = {str(p) for p in weight_files(directory) if wanted(p)}
    problems = [f"{rel}: not recorded in {MANIFEST}" for rel in sorted(present - set(recorded))]
    paths = {rel: contained_path(directory, rel, f"{directory / MANIFEST}: files", DataError) for rel in recorded}
    problems += [f"{rel}: missing" for rel, path in sorted(paths.items()) if not path.is_file()]
    present_paths = {rel: path for rel, path in paths.items() if path.is_file()}
    # hashlib releases the GIL on large blocks: shards hash in parallel
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = dict(zip(present_paths, pool.map(sha256_file, present_paths.values())))
    problems += [f"{rel}: SHA-256 differs from the manifest" for rel in sorted(digests) if digests[rel] != recorded[rel]]
    tokenizer = manifest.get("tokenizer_files", {})
    for rel, digest in sorted(tokenizer.items() if isinstance(tokenizer, dict) else []):
        path = contained_path(directory, rel, f"{directory / MANIFEST}: tokenizer_files", DataError)
        if wanted(rel) and (not path.is_file() or sha256_file(path) != digest):
            problems.append(f"{rel}: {'missing' if not path.is_file() else 'SHA-256 differs from the manifest'} "
                            "(a swapped tokenizer gives the weights other token ids)")
    if problems:
        raise DataError(f"{directory}: its files do not match its {MANIFEST} ({'; '.join(problems[:5])}); it was "
                        "modified or only partly replaced after it was written: re-create it")
    return manifest


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
        "tokenizer_files": tokenizer_hashes(directory),
        # every file this write produced: a later --overwrite removes these and refuses if anything else is there
        "outputs": sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*")
                          if p.is_file() and p.relative_to(directory) != Path(MANIFEST)),
        "parents": [describe_input(p) for p in (inputs or [])],
        **(extra or {}),
    }
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def save_model_dir(directory: str | Path, write: Any, atomic: bool = True,
                   manifest: dict[str, Any] | None = None) -> Path:
    """Write a model with `write(folder)` and then its manifest (loading refuses a directory without one):
    atomically (into a temp folder renamed over `directory`), or in place (a trainer checkpoint's staging).
    `manifest`: kwargs for write_manifest (default kind "model")."""
    from mmadapt.io import atomic_directory

    directory = Path(directory)
    manifest = manifest if manifest is not None else {"kind": "model"}
    if atomic:
        with atomic_directory(directory) as tmp:
            write(tmp)
            write_manifest(tmp, final_path=directory, **manifest)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        write(directory)
        write_manifest(directory, **manifest)
    return directory


def verify(directory: str | Path) -> list[str]:
    """Re-hash the files every manifest in the chain names; return the problems (empty: all match)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory}: no {MANIFEST}"]
    problems: list[str] = []

    def check(node: dict[str, Any], root: Path) -> None:
        for rel, digest in node.get("files", {}).items():
            # a manifest names files inside its own directory: never a probe of other paths
            try:
                path = contained_path(root, rel, f"{node.get('kind')} manifest of {root}: files", DataError)
            except DataError as e:
                problems.append(str(e))
                continue
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


def lineage_rows(manifest: dict[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    """The chain as rows (this directory first, then its inputs, depth-first): depth, kind, path, created, weights."""
    row = {"depth": depth, "kind": manifest.get("kind", "?"), "path": manifest.get("path", "?"),
           "created": manifest.get("created", ""), "weight_files": len(manifest.get("files") or {})}
    rows = [row]
    for parent in manifest.get("parents") or []:
        if isinstance(parent, dict):
            rows += lineage_rows(parent, depth + 1)
    return rows


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
