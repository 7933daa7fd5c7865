"""Edits that survive: the edits task on known outcomes, inherited edits re-measured on a derived model,
and `mmadapt edit reapply` with its exact revert."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mmadapt.cli import main
from mmadapt.config import from_dict
from mmadapt.eval.config import SuiteConfig
from mmadapt.eval.run import evaluate_suite, inherited_edit_tasks
from mmadapt.lineage import hash_files, write_manifest
from tests.eval.helpers import save_hf

REQUESTS = [
    {"prompt": "{} is", "subject": "the shape", "target_new": "blue", "target_true": "red",
     "paraphrase_prompts": ["where is the shape"], "neighborhood_prompts": [{"prompt": "the dog is", "target": "lazy"}]},
    {"prompt": "{} has", "subject": "the fox", "target_new": "three", "target_true": "one"},
]


@pytest.fixture
def edited(tokenizer_dir, tmp_path):
    from mmadapt.editing.checkpoint import edit_checkpoint
    from mmadapt.editing.requests import parse_requests

    from mmadapt.editing.checkpoint import load_llm, open_checkpoint
    from mmadapt.editing.tokens import score_targets

    base = save_hf(tokenizer_dir, tmp_path / "base", seed=0)
    model, tok = load_llm(open_checkpoint(base))
    requests = []
    for r in REQUESTS:  # the new target is the one the base finds less likely: efficacy 0 before the edit
        text = r["prompt"].format(r["subject"])
        new, true = score_targets(model, tok, [(text, r["target_new"]), (text, r["target_true"])]).tolist()
        requests.append(r if new < true else r | {"target_new": r["target_true"], "target_true": r["target_new"]})
    out = tmp_path / "edited"
    edit_checkpoint(base, parse_requests(requests), "ft", {"layer": 1, "steps": 40, "lr": 0.05, "norm_constraint": 0.5},
                    out, allow_weak=True)
    return base, out


def test_edit_record_is_remeasured_on_a_derived_model_and_reapplied(edited, tokenizer_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    base, edited_dir = edited
    record = json.loads((edited_dir / "edit" / "edit.json").read_text())
    assert record["metrics"]["after"]["efficacy"] == 1.0 and record["metrics"]["before"]["efficacy"] == 0.0

    # a model derived from the edited one later (here: its layer-0 MLP changed), whose manifest names its parent
    derived = tmp_path / "derived"
    model = AutoModelForCausalLM.from_pretrained(edited_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    model.save_pretrained(derived, safe_serialization=True)
    shutil.copy(edited_dir / "tokenizer.json", derived / "tokenizer.json")
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        if (edited_dir / f).is_file():
            shutil.copy(edited_dir / f, derived / f)
    write_manifest(derived, kind="merge", inputs=[edited_dir])
    [inherited] = inherited_edit_tasks([str(base), str(derived)], [])
    assert inherited.record == str(edited_dir)

    (tmp_path / "ppl.jsonl").write_text(json.dumps({"text": "the quick brown fox"}) + "\n")
    suite = from_dict(SuiteConfig, {"tasks": [{"name": "ppl", "kind": "perplexity", "path": str(tmp_path / "ppl.jsonl")}],
                                    "bootstrap": 50})
    report = evaluate_suite(suite, [str(base), str(edited_dir), str(derived)], tmp_path / "report")
    edits = report["tasks"]["edits-edited"]["results"]
    assert edits["base"]["metrics"]["efficacy"] == 0.0  # the base never had the edit
    assert edits["edited"]["metrics"]["efficacy"] == record["metrics"]["after"]["efficacy"] == 1.0
    assert edits["derived"]["metrics"]["efficacy"] == 1.0  # a 1% change elsewhere keeps the edit
    assert edits["derived"]["delta"]["efficacy"] == 1.0

    # the edits task on a JSONL of requests with a portability probe: the base's own greedy answer is "ported"
    from mmadapt.eval.config import TaskConfig
    from mmadapt.eval.scoring import generate_raw, load_eval_model
    from mmadapt.eval.tasks import edits as edits_kind

    m = load_eval_model(base)
    best = generate_raw(m, ["the shape is"], max_new_tokens=1)[0].strip()  # the greedy next word
    worst = "dog" if best != "dog" else "cat"
    items = [("e.jsonl:1", REQUESTS[0] | {"portability": [{"prompt": "the shape is", "target": best},
                                                         {"prompt": "the shape is", "target": worst}]})]
    scored = edits_kind(m, from_dict(TaskConfig, {"name": "e", "kind": "edits", "path": "e.jsonl"}), items, tmp_path, 4)
    assert scored.samples["portability"] == [1.0, 0.0] and set(scored.metrics) >= {"efficacy", "neighborhood", "fluency"}

    # re-apply the recorded edit to another model of the same architecture; revert restores it bit for bit
    other = save_hf(tokenizer_dir, tmp_path / "other", seed=1)
    out = tmp_path / "reapplied"
    assert main(["edit", "reapply", str(edited_dir), "--model", str(other), "--out", str(out), "--allow-weak"]) == 0
    assert "re-applied edits" in capsys.readouterr().out
    new = json.loads((out / "edit" / "edit.json").read_text())
    assert new["reapplied_from"]["path"] == str(edited_dir) and new["base"]["path"] == str(other)
    assert set(new["patched"]) == set(record["patched"])
    assert main(["edit", "revert", str(out), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted") == hash_files(other)
    # --recompute: the recorded method and hyper-parameters run afresh on the other model
    again = tmp_path / "recomputed"
    assert main(["edit", "reapply", str(edited_dir), "--model", str(other), "--out", str(again), "--recompute",
                 "--allow-weak"]) == 0
    redone = json.loads((again / "edit" / "edit.json").read_text())
    assert redone["method"] == "ft" and redone["hparams"] == record["hparams"]
    assert redone["metrics"]["after"]["efficacy"] == 1.0
    # a directory that is not a model: exit code 2, nothing written
    assert main(["edit", "reapply", str(edited_dir), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
