"""Reading record files (.json list or .jsonl); every record carries `where` ("file:line") for errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmadapt.errors import DataError
from mmadapt.io import read_json_items


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """[(where, record)] from a JSON list file or a JSON-lines file; a malformed line names file and line."""
    path = Path(path)
    records = read_json_items(path, "a data file", DataError)
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not records:
        raise DataError(f"{path}: no records")
    return records
