"""Where records come from: JSON / JSON-lines files (read here, so errors name file:line), Parquet / Arrow / CSV
files and `datasets.save_to_disk` folders (through the `datasets` library), and a dataset registry file naming
datasets as LLaMA-Factory's `dataset_info.json` does (file, layout, column mapping, tags, media folder)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.config import read_yaml
from mmadapt.data.records import read_records
from mmadapt.errors import ConfigError, DataError

RECORD_SUFFIXES = (".json", ".jsonl")
TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
# LLaMA-Factory dataset_info keys we read; hub and script sources need the network, so they are refused by name.
ENTRY_KEYS = ("file_name", "formatting", "ranking", "columns", "tags", "media_dir", "split", "num_samples", "weight")
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass
class Source:
    """One dataset to read: its rows come from `path`; `name` is how data.weights and messages refer to it."""

    name: str
    path: Path
    formatting: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    media_root: Path | None = None
    split: str = "train"
    ranking: bool | None = None  # the registry says it holds preference pairs (checked against data.format)
    num_samples: int | None = None
    weight: float = 1.0


def _str_dict(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}: expected a mapping of strings to strings, got {value!r}")
    return dict(value)


def read_registry(path: str | Path) -> dict[str, Source]:
    """A dataset registry file (JSON or YAML): name -> {file_name, formatting, columns, tags, media_dir, ...};
    relative paths are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.dataset_info: file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        entries = read_yaml(path)
    else:
        import json

        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected a mapping of dataset names to entries")
    out = {}
    for name, entry in entries.items():
        where = f"{path}: {name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping")
        remote = [k for k in REMOTE_KEYS if k in entry]
        if remote and "file_name" not in entry:
            raise ConfigError(f"{where}: {remote[0]} needs the network; download the data and give 'file_name'")
        unknown = [k for k in entry if k not in ENTRY_KEYS and k not in REMOTE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(ENTRY_KEYS)}")
        if not isinstance(entry.get("file_name"), str):
            raise ConfigError(f"{where}: 'file_name' (a file or folder, relative to {path.parent}) is required")
        media = entry.get("media_dir")
        out[name] = Source(
            name=name, path=path.parent / entry["file_name"], formatting=str(entry.get("formatting", "auto")),
            columns=_str_dict(entry.get("columns"), f"{where}.columns"), tags=_str_dict(entry.get("tags"), f"{where}.tags"),
            media_root=(path.parent / media) if isinstance(media, str) else path.parent, split=str(entry.get("split", "train")),
            ranking=entry.get("ranking"), num_samples=entry.get("num_samples"), weight=float(entry.get("weight", 1.0)))
    return out


def _table_rows(path: Path, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a Parquet / Arrow / CSV file or a save_to_disk folder, as stored (media stay bytes or paths)."""
    try:
        import datasets
    except ImportError as e:
        raise ConfigError(f"{path}: reading it needs the `datasets` package (pip install datasets)") from e
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path}: no split {split!r}; splits: {', '.join(loaded)} (set the dataset's 'split')")
                loaded = loaded[split]
        elif path.suffix == ".arrow":
            loaded = datasets.Dataset.from_file(str(path))
        else:
            loaded = getattr(datasets.Dataset, f"from_{TABLE_SUFFIXES[path.suffix]}")(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read it with `datasets`: {e}") from None
    table = loaded.with_format("arrow")[:]  # raw storage: images stay {bytes, path}, nothing is decoded twice
    return [(f"{path}[row {i}]", row) for i, row in enumerate(table.to_pylist())]


def read_rows(source: Source) -> list[tuple[str, dict[str, Any]]]:
    """[(where, raw record)] of one source, every record an object."""
    path = source.path
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _table_rows(path, source.split)
        files = sorted(p for p in path.iterdir() if p.suffix in RECORD_SUFFIXES or p.suffix in TABLE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: a folder with no data files (.json, .jsonl, .parquet, .arrow, .csv) and not a "
                            "`datasets.save_to_disk` folder")
        return [row for f in files for row in read_rows(Source(source.name, f, split=source.split))]
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.suffix in TABLE_SUFFIXES:
        return _table_rows(path, source.split)
    if path.suffix not in RECORD_SUFFIXES:
        raise DataError(f"{path}: unknown data file type {path.suffix!r}; valid: .json, .jsonl, .parquet, .arrow, "
                        ".csv, or a `datasets.save_to_disk` folder")
    return read_records(path)
