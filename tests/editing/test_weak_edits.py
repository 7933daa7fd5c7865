"""Edits that say when they fail, on a tiny Qwen2 with a byte-level BPE tokenizer: an LLM that never learned its
facts cannot take an edit (exit 1, nothing written, unless --allow-weak: then the record says status weak); a
trained one is edited at the layer causal tracing finds, and the edit takes."""

import json

import pytest
import torch
from bytelevel_helpers import bytelevel_tokenizer, fact_lines, make_facts, save, tiny_qwen2, train_facts

from mmadapt.cli import main
from mmadapt.editing.evaluate import edit_outcomes
from mmadapt.editing.trace import locate_layer, trace_fact


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    facts = make_facts()
    tok = bytelevel_tokenizer(fact_lines(facts))
    root = tmp_path_factory.mktemp("bytelevel")
    untrained = save(tiny_qwen2(len(tok)), tok, root / "untrained")
    model = tiny_qwen2(len(tok))
    assert train_facts(model, tok, facts) == 1.0
    return facts, tok, model, untrained, save(model, tok, root / "trained")


def _edits(path, facts, n=2):
    names = list(facts)
    records = []
    for name in names[:n]:
        new = next(c for c in ("tokyo", "cairo") if c != facts[name])
        records.append({"prompt": "The hometown of {}", "subject": name, "target_new": new,
                        "target_true": facts[name]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _apply(model_dir, edits, out, *extra, method="rome"):
    return main(["edit", "apply", "--model", str(model_dir), "--edits", str(edits), "--method", method, "--out", str(out),
                 "--set", "mom2=false", "--set", "num_prefixes=2", *extra])


def test_edit_that_does_not_move_its_target_fails(world, tmp_path, capsys):
    facts, _, _, untrained, _ = world
    edits = _edits(tmp_path / "edits.jsonl", facts)
    assert _apply(untrained, edits, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "did not take" in err and "edits.jsonl:1" in err and "--allow-weak" in err
    assert not (tmp_path / "out").exists()  # nothing written

    assert _apply(untrained, edits, tmp_path / "kept", "--allow-weak") == 0
    record = json.loads((tmp_path / "kept" / "edit" / "edit.json").read_text())
    assert record["status"] == "weak"
    assert {o["status"] for o in record["outcomes"]} <= {"failed", "weak"}
    assert record["layer_choice"]["source"] == "default"  # tracing found no layer carrying the facts


def test_trained_bytelevel_qwen2_is_edited_at_the_traced_layer(world, tmp_path):
    facts, tok, model, _, trained = world
    name = list(facts)[0]
    layer, effects = locate_layer(model, tok, [("The hometown of {}", name, facts[name])])
    assert layer is not None and effects[layer] == max(effects) > 0.01

    edits = _edits(tmp_path / "edits.jsonl", facts)
    assert _apply(trained, edits, tmp_path / "edited") == 0
    record = json.loads((tmp_path / "edited" / "edit" / "edit.json").read_text())
    assert record["status"] == "ok" and all(o["status"] == "ok" for o in record["outcomes"])
    assert record["layer_choice"]["source"] == "trace"
    assert record["layers"] == [max(range(len(record["layer_choice"]["trace_effects"])),
                                    key=record["layer_choice"]["trace_effects"].__getitem__)]
    assert record["metrics"]["after"]["efficacy"] == 1.0


def test_memit_on_trained_bytelevel_qwen2_takes_at_the_traced_layer(world, tmp_path):
    facts, _, _, untrained, trained = world
    edits = _edits(tmp_path / "edits.jsonl", facts, n=4)
    assert _apply(trained, edits, tmp_path / "edited", "--set", "mom2_update_weight=0.1", method="memit") == 0
    record = json.loads((tmp_path / "edited" / "edit" / "edit.json").read_text())
    assert record["status"] == "ok" and record["layer_choice"]["source"] == "trace"
    effects = record["layer_choice"]["trace_effects"]
    assert record["layers"][-1] == max(range(len(effects)), key=effects.__getitem__)
    assert _apply(untrained, edits, tmp_path / "nothing", method="memit") == 1 and not (tmp_path / "nothing").exists()


def test_trace_summary_agrees_with_its_heat_map(world):
    facts, tok, model, _, _ = world
    name = list(facts)[1]
    result = trace_fact(model, tok, "The home of {}", name, facts[name], samples=4, kinds=("hidden", "mlp"))
    summary = result.summary()
    for kind, grid in result.scores.items():
        token, layer = divmod(int(grid.argmax()), grid.shape[1])
        assert (summary["peaks"][kind]["token"], summary["peaks"][kind]["layer"]) == (token, layer)
        assert summary["subject_last_effects"][kind] == (grid[result.subject[1]] - result.corrupted).tolist()
    effects = result.effects("mlp")
    assert all(effects[i] > 0 for i in summary["top_mlp_layers"])  # never a layer that restores nothing
    assert summary["top_mlp_layers"][0] == int(effects.argmax())


def test_edit_outcomes_classify_by_target_movement():
    before = [{"target_new_logprob": -5.0, "efficacy": 0.0}] * 3
    after = [{"target_new_logprob": -5.0, "efficacy": 0.0}, {"target_new_logprob": -3.0, "efficacy": 0.0},
             {"target_new_logprob": -0.1, "efficacy": 1.0}]
    assert [o["status"] for o in edit_outcomes(before, after)] == ["failed", "weak", "ok"]
