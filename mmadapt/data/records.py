"""Reading record files (.json list or .jsonl); every record carries `where` ("file:line") for errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError
from mmadapt.io import read_utf8


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """[(where, record)] from a JSON list file or a JSON-lines file; a malformed line names file and line."""
    path = Path(path)
    text = read_utf8(path, "a data file", DataError)
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of records")
        records = [(f"{path}[{i}]", r) for i, r in enumerate(data)]
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not records:
        raise DataError(f"{path}: no records")
    return records
