"""`mmadapt eval` end to end: two models side by side, the report files, the cache (resume and extend), bad input."""

from __future__ import annotations

import json

import yaml

from mmadapt.cli import main
from tests.eval.helpers import save_tiny, write_jsonl


def _suite(tmp_path, tasks, **extra):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks, "bootstrap": 100, **extra}))
    return path


def test_side_by_side_report_cache_and_resume(make_model_config, image_files, tmp_path, capsys):
    a = save_tiny(make_model_config, tmp_path / "model-a", seed=0)
    b = save_tiny(make_model_config, tmp_path / "model-b", seed=1)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "vqa.jsonl", [{"question": "what colour is the shape ?", "answer": "red", "image": str(p)}
                                     for p in image_files])
    write_jsonl(data / "mc.jsonl", [{"question": "what colour ?", "choices": ["red", "blue"], "answer": i % 2,
                                     "image": str(p)} for i, p in enumerate(image_files)])
    write_jsonl(data / "ppl.jsonl", [{"text": "the quick brown fox"}, {"text": "red green blue"}])
    tasks = [{"name": "vqa", "kind": "short_answer", "path": str(data / "vqa.jsonl"), "max_new_tokens": 3},
             {"name": "mc", "kind": "multiple_choice", "path": str(data / "mc.jsonl")}]
    suite = _suite(tmp_path, tasks, models=[str(a)])
    out = tmp_path / "report"
    assert main(["eval", str(suite), "--model", str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vqa (short_answer, n=4)" in printed and "model-b" in printed

    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["model-a", "model-b"]
    assert report["models"][0]["lineage"]["chain"][-1]["kind"] == "model"
    mc = report["tasks"]["mc"]["results"]
    assert set(mc["model-a"]["metrics"]) == {"accuracy", "accuracy_norm"}
    assert mc["model-a"]["delta"]["accuracy"] == 0.0
    assert mc["model-b"]["delta"]["accuracy"] == mc["model-b"]["metrics"]["accuracy"] - mc["model-a"]["metrics"]["accuracy"]
    lo, hi = mc["model-b"]["ci"]["accuracy"]
    assert lo <= mc["model-b"]["metrics"]["accuracy"] <= hi
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # self-contained: charts inline, nothing fetched
    assert "<script" not in html and "src='http" not in html and "<link" not in html
    assert "| model-b |" in (out / "report.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["kind"] == "eval_report"

    # resume: a killed run lost one result; only that one is recomputed, the others are read back unchanged
    caches = sorted((out / "cache").rglob("*.json"))
    assert len(caches) == 4
    stamps = {p: p.stat().st_mtime_ns for p in caches}
    caches[0].unlink()
    assert main(["eval", str(suite), "--model", str(b), "--out", str(out)]) == 0
    assert caches[0].is_file()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in caches[1:])
    assert json.loads((out / "report.json").read_text())["tasks"]["mc"]["results"] == report["tasks"]["mc"]["results"]

    # extend: a new task adds two results, the four cached stay as they were
    stamps = {p: p.stat().st_mtime_ns for p in caches}
    tasks.append({"name": "ppl", "kind": "perplexity", "path": str(data / "ppl.jsonl")})
    suite = _suite(tmp_path, tasks, models=[str(a), str(b)])
    assert main(["eval", str(suite), "--out", str(out)]) == 0
    assert len(list((out / "cache").rglob("*.json"))) == 6
    assert all(p.stat().st_mtime_ns == stamps[p] for p in caches)
    assert "ppl" in json.loads((out / "report.json").read_text())["tasks"]

    # changed data: the task hash changes, so the task is scored again
    write_jsonl(data / "ppl.jsonl", [{"text": "the lazy dog"}])
    assert main(["eval", str(suite), "--out", str(out)]) == 0
    assert len(list((out / "cache").rglob("*.json"))) == 8


def test_bad_suite_exits_2_naming_the_place(make_model_config, tmp_path, capsys):
    a = save_tiny(make_model_config, tmp_path / "m", image=False)
    (tmp_path / "x.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    cases = [
        ({"tasks": [{"name": "t", "kind": "short_anwser", "path": str(tmp_path / "x.jsonl")}]}, "tasks[0].kind"),
        ({"tasks": [{"name": "t", "kind": "short_answer", "pth": "x"}]}, "did you mean 'path'"),
        ({"tasks": [{"name": "t", "kind": "retrieval", "path": str(tmp_path / "x.jsonl")}]}, "needs index"),
        ({"tasks": [{"name": "t", "kind": "short_answer", "path": str(tmp_path / "missing.jsonl")}]}, "missing.jsonl"),
        ({"tasks": [{"name": "t", "kind": "multiple_choice", "path": str(tmp_path / "x.jsonl")}]}, "choices"),
    ]
    for n, (data, expected) in enumerate(cases):
        suite = tmp_path / f"s{n}.yaml"
        suite.write_text(yaml.safe_dump(data))
        assert main(["eval", str(suite), "--model", str(a), "--out", str(tmp_path / f"r{n}")]) == 2, expected
        assert expected in capsys.readouterr().err
    # an existing directory that is not a report is never reused
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    suite = tmp_path / "ok.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "t", "kind": "short_answer", "path": str(tmp_path / "x.jsonl")}]}))
    assert main(["eval", str(suite), "--model", str(a), "--out", str(tmp_path / "busy")]) == 2
    assert "not an eval report directory" in capsys.readouterr().err
