"""`mmadapt rag build|add|delete|query|eval|info` through the real entry point: the console module in a subprocess
for build and for bad input, `mmadapt.cli.main` in-process for the rest (each subprocess pays the model import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmadapt.cli import main

from rag_helpers import BACKENDS


def mmadapt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmadapt.cli", "rag", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module", params=BACKENDS)
def cli_index(tmp_path_factory, topic_corpus, request) -> tuple[Path, Path]:
    """(corpus dir, index dir) built by `mmadapt rag build` from one .txt file per topic plus one unreadable file,
    on each vector backend."""
    root = tmp_path_factory.mktemp("cli")
    docs = root / "docs"
    docs.mkdir()
    for d in topic_corpus.documents[:7]:  # the last topic is added later with `rag add`
        (docs / f"{d.metadata['topic']}.txt").write_text(d.text + "\n")
    (docs / "scan.txt").write_bytes(b"\x00\x01\x02binary")
    out = mmadapt("build", docs, "--out", root / "index", "--kind", "flat", "--overlap", "8", "--backend", request.param)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "7 files read, 7 documents, 1 skipped" in out.stdout
    assert f"skipped {docs / 'scan.txt'}: binary file (NUL bytes), not text" in out.stdout
    assert "7 passages added, 0 skipped" in out.stdout
    return docs, root / "index"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["rag", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_then_add_query_delete_and_info(cli_index, tmp_path, topic_corpus, capsys):
    import shutil

    docs, built = cli_index
    index = tmp_path / "index"
    shutil.copytree(built, index)  # the module's index stays as built for the eval test
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["config"]["chunk"]["overlap"] == 8 and manifest["store"]["counts"]["chunks"] == 7

    extra = tmp_path / "geology.txt"
    extra.write_text(topic_corpus.documents[7].text)
    code, out, _ = run(capsys, "add", index, extra, docs / "music.txt")
    assert code == 0 and "1 passages added, 1 skipped" in out and "duplicate passage" in out
    assert json.loads(out[out.index("{"):])["chunks"] == 8

    code, out, _ = run(capsys, "query", index, "what makes a mountain spew lava", "-k", "2", "--json")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 2 and hits[0]["source"] == str(extra) and hits[0]["score"] > hits[1]["score"]
    code, out, _ = run(capsys, "query", index, "an instrument you play with a bow", "-k", "1")
    assert code == 0 and out.startswith(" 1.") and f"({docs / 'music.txt'})" in out and "violin" in out
    code, out, _ = run(capsys, "query", index, "an instrument you play with a bow", "--filter", f"source={extra}", "--json")
    assert code == 0 and [h["chunk_id"] for h in json.loads(out)] == [f"{extra}#0"]

    code, out, _ = run(capsys, "delete", index, "--source", docs / "music.txt", "--id", f"{extra}#0")
    assert (code, out.strip()) == (0, "deleted 2 passages; 6 remain")
    code, _, err = run(capsys, "delete", index, "--id", "nothing#0")
    assert code == 2 and "no passage matches --id nothing#0" in err
    code, _, err = run(capsys, "delete", index)
    assert code == 2 and "--id, --source or --doc" in err

    code, out, _ = run(capsys, "info", index, "--verify")
    stats = json.loads(out[: out.rindex("}") + 1])
    assert code == 0 and stats["chunks"] == 6 and stats["generation"] == 4 and out.rstrip().endswith("verify: OK")
    gen = index / f"gen-{stats['generation']:06d}" / "meta.sqlite"
    data = bytearray(gen.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only re-hashing notices
    gen.write_bytes(bytes(data))
    code, out, _ = run(capsys, "info", index, "--verify")
    assert code == 1 and "verify: FAILED" in out and "meta.sqlite: SHA-256 differs" in out


def test_eval_prints_recall_and_mrr_for_both_file_layouts(cli_index, tmp_path, topic_corpus, capsys):
    docs, index = cli_index
    ids = [str(docs / f"{d.metadata['topic']}.txt") for d in topic_corpus.documents[:7]]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": q, "relevant": [i]}) + "\n" for q, i in zip(topic_corpus.queries, ids)))
    code, out, _ = run(capsys, "eval", index, queries, "--at", "1", "3")
    values = dict(line.split() for line in out.splitlines())
    assert code == 0 and set(values) == {"recall_at_1", "recall_at_3", "mrr", "queries"}
    assert float(values["recall_at_1"]) == 1.0 and float(values["mrr"]) == 1.0 and float(values["queries"]) == 7

    by_id = tmp_path / "by_id.jsonl"
    by_id.write_text("".join(json.dumps({"id": f"q{n}", "query": q}) + "\n" for n, q in enumerate(topic_corpus.queries[:7])))
    wrong = tmp_path / "wrong.tsv"  # every query judged against the baking passage: only q0 is right
    wrong.write_text("".join(f"q{n}\t{ids[0]}#0\n" for n in range(7)))
    code, out, _ = run(capsys, "eval", index, by_id, wrong, "--at", "1", "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["recall_at_1"] == pytest.approx(1 / 7) and 1 / 7 <= metrics["mrr"] < 1


def test_bad_input_exits_2_naming_the_file_and_line(cli_index, tmp_path, capsys):
    docs, index = cli_index
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query": "lava", "relevant": ["x"]}) + "\n{not json\n")
    out = mmadapt("eval", index, queries)
    assert out.returncode == 2 and f"{queries}:2: invalid JSON" in out.stderr and "Traceback" not in out.stderr
    queries.write_text(json.dumps({"query": "lava", "relevant": ["x"]}) + "\n" + json.dumps({"query": "ash"}) + "\n")
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"id": "q1", "query": "lava"}) + "\n")
    tsv = tmp_path / "rel.tsv"
    tsv.write_text("q1\tgood\nq1 only-one-column\n")
    missing = tmp_path / "missing"
    cases = [
        (("eval", index, queries), f'{queries}:2: expected {{"query": str, "relevant": [ids]}}'),
        (("eval", index, ids, tsv), f"{tsv}:2: expected `query_id<TAB>relevant_id`"),
        (("eval", index, ids, tmp_path / "none.tsv"), "relevance file not found"),
        (("query", missing, "lava"), f"{missing}: not a RAG index (no manifest.json)"),
        (("query", index, "lava", "--filter", "year"), "--filter 'year': expected key=value"),
        (("query", index, "lava", "--image", tmp_path / "none.png"), "--image: file not found"),
        (("build", missing, "--out", tmp_path / "x"), f"skipped {missing}: no such file or directory"),
        (("add", index, docs / "scan.txt"), f"nothing to add from {docs / 'scan.txt'}"),
        (("build", docs, "--out", index), "exists; pass overwrite"),
        (("build", docs, "--out", tmp_path / "y", "--chunk-size", "0"), "chunk.size must be >= 1, got 0"),
        (("build", docs, "--out", tmp_path / "y", "--set", "index.nprob=3"), "did you mean 'nprobe'"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, *args)
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    for bad_k in (("query", index, "lava", "-k", "0"), ("eval", index, queries, "--at", "1", "x")):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage and the flag's problem on stderr, exit 2
            main(["rag", *map(str, bad_k)])
        assert exit_info.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err
