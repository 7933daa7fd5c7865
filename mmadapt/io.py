"""Atomic writes, hashing, and the output rules every writer follows.

Nothing the user had is lost: an interrupted write leaves the old output as it was, an existing
directory is replaced only when it is an earlier output of the same command and the user passed
`--overwrite`, and a path read from an artefact never leaves the artefact's own directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mmadapt.errors import ConfigError, DataError, MMAdaptError

MANIFEST = "manifest.json"  # lineage.MANIFEST; here to avoid an import cycle


def read_utf8(path: str | os.PathLike, kind: str, error: type[MMAdaptError] = ConfigError) -> str:
    """A text file's contents; a missing file or a byte that is not UTF-8 is `error` naming the file and line
    (`kind`: what the file is, for the message: "a data file", "a config file", ...)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: line {line} holds byte 0x{raw[e.start]:02x}, which is not valid UTF-8; {kind} "
                    "must be UTF-8 text") from None


def parse_json(text: str, where: str, error: type[MMAdaptError] = DataError, line: int = 1) -> Any:
    """`json.loads(text)`; bad JSON is `error` naming `where:line` (`line`: where `text` starts in its file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}:{line + e.lineno - 1}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}:{line}: invalid JSON: nested too deeply") from None


def read_json(path: str | os.PathLike, kind: str, error: type[MMAdaptError] = DataError,
              expect: type | None = None) -> Any:
    """A JSON file's value; a missing file, bad UTF-8 or bad JSON is `error` naming the file and line, and a value
    that is not an `expect` (dict, list) names what was found (`kind`: what the file is, for the message)."""
    value = parse_json(read_utf8(path, kind, error), str(path), error)
    if expect is not None and not isinstance(value, expect):
        raise error(f"{path}: {kind} must hold a JSON {_JSON_NAMES.get(expect, expect.__name__)}, "
                    f"not {_JSON_NAMES.get(type(value), type(value).__name__)}")
    return value


_JSON_NAMES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_json_items(path: str | os.PathLike, kind: str, error: type[MMAdaptError] = DataError) -> list[tuple[str, Any]]:
    """[(where, item)] from a JSON list file (`.json`, or text starting with '[') or a JSON-lines file; `where` is
    "file[i]" or "file:line" (1-based; blank lines skipped), for messages about one item."""
    path = Path(path)
    text = read_utf8(path, kind, error)
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        data = parse_json(text, str(path), error)
        if not isinstance(data, list):
            raise error(f"{path}: {kind} in .json form must hold a list of records")
        return [(f"{path}[{i}]", item) for i, item in enumerate(data)]
    items: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        items.append((f"{path}:{lineno}", parse_json(line, str(path), error, lineno)))
    return items


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def contained_path(root: str | os.PathLike, relative: Any, what: str,
                   error: type[MMAdaptError] = ConfigError) -> Path:
    """`root / relative`, refused (before anything is read or written) when it would leave `root`.

    `relative` comes from an artefact or a config (a shard name, an edit record, a stage name): absolute
    paths, `..` that climbs out, and symlinks that point outside are all refused; `what` names the field.
    """
    if not isinstance(relative, (str, os.PathLike)) or not str(relative) or "\x00" in str(relative):
        raise error(f"{what}: {relative!r} is not a relative path inside {root}")
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        raise error(f"{what}: {str(relative)!r} is an absolute path; only paths inside {root} are allowed")
    root = Path(root)
    path = root / rel
    real_root = root.resolve()
    real = path.resolve()  # follows symlinks, so a link inside root that points out is caught too
    if real != real_root and real_root not in real.parents:
        raise error(f"{what}: {str(relative)!r} leaves {root}; only paths inside it are allowed")
    return path


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is process-wide)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path` (mode as the umask says)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output is a normal file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _owner_tag() -> str:
    """Host and pid in temp names, so the next run can tell a dead writer's leftovers from a live one's."""
    return f"{socket.gethostname().replace('-', '_').replace('.', '_')}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` left beside `path` by killed writers on this host (live ones are
    kept). An `.old-*` holding the previous output while `path` is missing (killed between the two renames of
    a replace) is put back first. Returns what was removed."""
    path = Path(path)
    host, removed = _owner_tag().split("-")[0], []
    if not path.parent.is_dir():
        return removed
    for kind in ("old", "tmp"):  # old first: a previous output is restored before anything is deleted
        for entry in sorted(path.parent.glob(f".{path.name}.{kind}-*")):
            parts = entry.name[len(f".{path.name}.{kind}-"):].split("-")
            if len(parts) < 3 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
                continue
            previous = entry / path.name
            if kind == "old" and previous.exists() and not path.exists():
                os.replace(previous, path)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def replace_directory(staged: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished directory `staged` to `path` (same filesystem): renamed into place, an existing `path`
    first moved aside and removed only once the new one is there, so a kill leaves one whole version
    (`clean_stale` restores the previous one if the kill fell between the two renames)."""
    staged, path = Path(staged), Path(path)
    _fsync_dir(staged)
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{_owner_tag()}", dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(staged, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename.

    An interrupted write leaves `path` exactly as it was (the temp directory is removed, or left
    as `.NAME.tmp-*` if the process is killed: readers ignore it and the next write removes it).
    Callers that replace a user-visible output check it first with `output_directory`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{_owner_tag()}", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the output is a normal directory
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() or p.is_symlink()}


def check_output_dir(path: str | os.PathLike, kind: str, overwrite: bool, what: str = "--out",
                     layout: set[str] | None = None, ignore: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse to write `path` unless it is new, empty, or an earlier `kind` output and `overwrite` is set.

    An earlier output is recognised by its manifest.json (same `kind`, before any ':'); even then, a file
    mmadapt did not write there (not among the manifest's `outputs`, or outside `layout` for manifests that
    predate `outputs`) is never removed: the write is refused and the file named. `ignore`: top-level entries
    the caller accounts for itself (training's own run state, and inputs its config keeps inside the directory).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: exists and is not a directory; choose a new output directory")
    if not any(p for p in path.iterdir() if p.name not in ignore):
        return
    manifest: Any = None
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((path / MANIFEST).read_text())
    found = manifest.get("kind") if isinstance(manifest, dict) else None
    if not isinstance(found, str) or found.split(":")[0] != kind.split(":")[0]:
        what_it_is = f"a {found!r} output" if isinstance(found, str) else "not an mmadapt output (no manifest.json)"
        raise ConfigError(f"{what} {path}: exists, is not empty and is {what_it_is}, not an earlier {kind} output; "
                          "mmadapt never deletes what it did not write: choose a new or empty directory")
    if not overwrite:
        raise ConfigError(f"{what} {path}: holds an earlier {found} output; pass --overwrite to replace it, "
                          "or choose a new directory")
    recorded = manifest.get("outputs")
    if isinstance(recorded, list):
        ours = {str(p) for p in recorded} | {MANIFEST}
        foreign = sorted(f for f in _files(path) if f not in ours)
    else:  # written before manifests listed their outputs: only the command's own layout may go
        known = (layout or set()) | {MANIFEST} | set(manifest.get("files") or {})
        foreign = sorted(f for f in _files(path) if f.split(os.sep)[0] not in known and f not in known)
    foreign = [f for f in foreign if Path(f).parts[0] not in ignore]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ConfigError(f"{what} {path}: holds files mmadapt did not write ({', '.join(foreign[:5])}{more}); "
                          "--overwrite replaces only mmadapt's own outputs: move them away or choose a new directory")


@contextlib.contextmanager
def output_directory(path: str | os.PathLike, kind: str, overwrite: bool = False, what: str = "--out") -> Iterator[Path]:
    """`atomic_directory` for a command's output: checked before any work (`check_output_dir`) and again just
    before the rename (nothing foreign appeared meanwhile). Yields the temp directory to fill."""
    check_output_dir(path, kind, overwrite, what)
    with atomic_directory(path) as tmp:
        yield tmp
        check_output_dir(path, kind, overwrite, what)


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str = "output_dir") -> Iterator[None]:
    """One writer at a time for `path`: a lock file beside it (`.NAME.lock`, kept: it is how writers meet).
    A second writer is refused at once with a message, not queued."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.parent / f".{path.name}.lock"
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{what} {path}: another mmadapt process is writing it (lock {lock_file}); wait for it "
                          "to finish or choose another directory") from None
    try:
        yield
    finally:
        lock.release()
