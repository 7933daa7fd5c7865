"""The one JSON / JSON-lines reader (mmadapt.io): values, file:line errors, and the error type the caller asks for."""

from __future__ import annotations

import json

import pytest

from mmadapt.errors import ConfigError, DataError
from mmadapt.io import parse_json, read_json, read_json_items, replace_directory


def test_read_json_returns_the_value_and_checks_its_type(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"k": [1, 2]}))
    assert read_json(path, "a test file", expect=dict) == {"k": [1, 2]}
    path.write_text("[1]")
    with pytest.raises(DataError, match=r"a\.json: a test file must hold a JSON object, not list"):
        read_json(path, "a test file", expect=dict)


def test_bad_json_names_file_and_line_with_the_callers_error_type(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(ConfigError, match=r"b\.json:4: invalid JSON"):
        read_json(path, "a config", ConfigError)
    with pytest.raises(DataError, match="not found"):
        read_json(tmp_path / "missing.json", "a data file")
    (tmp_path / "c.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"c\.json:1: .*not valid UTF-8"):
        read_json(tmp_path / "c.json", "a data file")
    with pytest.raises(DataError, match=r"where:7: invalid JSON"):
        parse_json("{", "where", line=7)
    with pytest.raises(DataError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "deep")


def test_items_from_json_lines_and_json_lists_carry_where(tmp_path):
    lines = tmp_path / "d.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_json_items(lines, "a data file") == [(f"{lines}:1", {"a": 1}), (f"{lines}:3", {"a": 2})]
    listed = tmp_path / "d.json"
    listed.write_text('[{"a": 1}, 2]')
    assert read_json_items(listed, "a data file") == [(f"{listed}[0]", {"a": 1}), (f"{listed}[1]", 2)]
    lines.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        read_json_items(lines, "a data file")
    listed.write_text('{"a": 1}')
    with pytest.raises(DataError, match="must hold a list of records"):
        read_json_items(listed, "a data file")


def test_replace_directory_swaps_in_the_new_version_whole(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    replace_directory(staged, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert not staged.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside
