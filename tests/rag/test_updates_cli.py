"""RAG updates from the CLI: `rag update` re-embeds only changed records, `add --replace` matches files by resolved
path, and a record's own `source` field is filterable under its name (mmadapt's column is `mmadapt.source`)."""

import json
import os

from mmadapt.cli import main


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def query_ids(capsys, index, text, *filters):
    capsys.readouterr()
    assert main(["rag", "query", str(index), text, "-k", "5", *sum((["--filter", f] for f in filters), [])]) == 0
    return [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]


def test_update_replace_and_user_metadata(tmp_path, capsys, monkeypatch, backend):
    monkeypatch.chdir(tmp_path)
    records = [{"id": f"r{i}", "text": f"record {i} about topic {i}", "source": "crm" if i % 2 else "web"} for i in range(6)]
    write(tmp_path / "docs.jsonl", records)
    assert main(["rag", "build", "docs.jsonl", "--out", "idx", "--backend", backend]) == 0
    records[2]["text"] = "record 2 now speaks of volcanoes"
    write(tmp_path / "docs.jsonl", records)
    capsys.readouterr()
    assert main(["rag", "update", "idx", "docs.jsonl"]) == 0
    assert "1 passages changed (1 embedded)" in capsys.readouterr().out  # 1 of 6 re-embedded
    assert query_ids(capsys, "idx", "volcanoes")[0] == "r2#0"
    records[3]["text"] = "record 3 is about glaciers"
    write(tmp_path / "docs.jsonl", records)
    assert main(["rag", "add", "idx", os.path.abspath("docs.jsonl"), "--replace"]) == 0  # built from a relative path
    hits = query_ids(capsys, "idx", "glaciers")
    assert hits[0] == "r3#0" and len(hits) == len(set(hits)) == 5  # replaced, not duplicated
    assert set(query_ids(capsys, "idx", "record", "source=crm")) == {"r1#0", "r3#0", "r5#0"}
