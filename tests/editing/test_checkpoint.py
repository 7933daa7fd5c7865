"""Editing saved checkpoints through the CLI: manifest and lineage, only edited bytes change, exact revert."""

import json
import shutil

import torch
from safetensors.torch import load_file

from mmadapt.cli import main
from mmadapt.lineage import hash_files, read_manifest, verify
from edit_helpers import fact_request


def write_edits(path, world, subjects, neighbours, drop_true=()):
    records = []
    for s in subjects:
        record = fact_request(world, s, neighbours)
        if s in drop_true:
            record.pop("target_true")
        records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def apply(model_dir, edits, out, method, corpus, stats, *extra):
    keep_job = ["--set", "kl_prompts=['the job of {}']"] if method != "ft" else []  # FT-L has no KL term
    return main(["edit", "apply", "--model", str(model_dir), "--edits", str(edits), "--method", method, "--out", str(out),
                 "--corpus", str(corpus), "--stats-dir", str(stats), *keep_job, *extra])


def test_edit_plain_hf_model_and_revert_exactly(facts, tmp_path, capsys):
    directory, world = facts.directory, facts.world
    base = directory / "llm"  # a plain HF model directory (config.json, model.safetensors, tokenizer)
    subjects = list(world)
    edits = write_edits(tmp_path / "edits.jsonl", world, subjects[:2], subjects[8:12], drop_true={subjects[1]})
    out = tmp_path / "edited"
    assert apply(base, edits, out, "rome", facts.corpus, tmp_path / "stats") == 0
    assert "rome" in capsys.readouterr().out

    record = json.loads((out / "edit" / "edit.json").read_text())
    assert record["metrics"]["after"]["efficacy"] == 1.0 and record["metrics"]["before"]["efficacy"] == 0.0
    assert record["metrics"]["after"]["neighborhood"] >= 0.75
    assert record["requests"][1]["target_true"] == world[subjects[1]]["city"]  # filled from the base model
    assert record["layers"] == [0] and list(record["delta_norms"]) == ["transformer.h.0.mlp.c_proj.weight"]
    assert record["base"]["files"] == hash_files(base)

    manifest = read_manifest(out)
    assert manifest["kind"] == "edit" and manifest["parents"][0]["path"] == str(base)
    assert {"edit/deltas.safetensors", "edit/original.safetensors", "model.safetensors"} <= set(manifest["files"])
    assert verify(out) == []

    # only the edited tensor differs from the base, by the recorded delta
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    edited = "transformer.h.0.mlp.c_proj.weight"
    assert [k for k in before if not torch.equal(before[k], after[k])] == [edited]
    deltas = load_file(str(out / "edit" / "deltas.safetensors"))
    assert torch.allclose(after[edited], before[edited] + deltas[edited], atol=1e-6)

    assert main(["edit", "revert", str(out), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted") == hash_files(base)  # bit for bit
    assert read_manifest(tmp_path / "reverted")["parents"][0]["kind"] == "edit"


def test_edit_mmadapt_checkpoint_with_memit(facts, tmp_path, capsys):
    from mmadapt.model import MultimodalLM

    directory, world = facts.directory, facts.world  # the core trainer's output: mmadapt_model.yaml, llm/, manifest.json
    subjects = list(world)
    edits = write_edits(tmp_path / "edits.jsonl", world, subjects[:6], subjects[12:18])
    out = tmp_path / "edited"
    assert apply(directory, edits, out, "memit", facts.corpus, tmp_path / "stats",
                 "--set", "layers=[0,1]", "--set", "mom2_update_weight=100", "--set", "v_weight_decay=0.05",
                 "--allow-weak") == 0  # one edit of six may not take: kept, and recorded as such
    record = json.loads((out / "edit" / "edit.json").read_text())
    assert record["checkpoint_kind"] == "mmadapt" and record["layers"] == [0, 1]
    assert record["metrics"]["after"]["efficacy"] >= 5 / 6
    assert record["status"] == ("ok" if record["metrics"]["after"]["efficacy"] == 1.0 else "weak")
    manifest = read_manifest(out)
    assert manifest["parents"][0]["kind"].startswith("training")  # the base's own manifest: the chain continues

    model = MultimodalLM.from_pretrained(out)  # still a loadable mmadapt checkpoint
    request = record["requests"][0]
    ids = model.tokenizer(request["prompt"].format(request["subject"]), return_tensors="pt")["input_ids"]
    answer = model.tokenizer.decode(model.generate(ids, max_new_tokens=1, do_sample=False)[0]).strip()
    assert answer == request["target_new"]

    capsys.readouterr()
    assert main(["edit", "eval", "--model", str(out), "--out", str(tmp_path / "metrics.json")]) == 0
    assert "efficacy" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["efficacy"] == record["metrics"]["after"]["efficacy"]

    assert main(["edit", "revert", str(out), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted" / "llm") == hash_files(directory / "llm")


def test_bfloat16_checkpoint_reverts_exactly(facts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, world = facts.directory, facts.world
    base = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(directory / "llm").to(torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(directory / "llm").save_pretrained(base)
    subjects = list(world)
    edits = write_edits(tmp_path / "edits.jsonl", world, subjects[:1], subjects[5:7])
    assert apply(base, edits, tmp_path / "edited", "ft", facts.corpus, tmp_path / "stats",
                 "--set", "norm_constraint=0.05") == 0
    weights = load_file(str(tmp_path / "edited" / "model.safetensors"))
    assert weights["transformer.h.0.mlp.c_proj.weight"].dtype == torch.bfloat16
    assert hash_files(tmp_path / "edited") != hash_files(base)
    assert main(["edit", "revert", str(tmp_path / "edited"), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted") == hash_files(base)


def test_trace_cli(facts, tmp_path, capsys):
    directory, world = facts.directory, facts.world
    subject = next(iter(world))
    out = tmp_path / "trace.png"
    assert main(["edit", "trace", "--model", str(directory), "--prompt", "the hometown of {}", "--subject", subject,
                 "--out", str(out), "--samples", "3"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["answer"] == world[subject]["city"] and summary["top_mlp_layers"][0] == 0
    assert "MLP layers carrying the fact" in capsys.readouterr().out


def test_bad_input_exits_2_naming_the_place(facts, tmp_path, capsys):
    directory, world = facts.directory, facts.world
    subject = next(iter(world))
    bad = tmp_path / "edits.jsonl"
    bad.write_text(json.dumps(fact_request(world, subject, [])) + "\n" + json.dumps({"prompt": "the home of", "subject": subject,
                                                                                   "target_new": "rome"}) + "\n")
    assert apply(directory, bad, tmp_path / "out", "rome", facts.corpus, tmp_path / "stats") == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    good = write_edits(tmp_path / "good.jsonl", world, [subject], [])
    assert apply(tmp_path / "missing", good, tmp_path / "out", "rome", facts.corpus, tmp_path / "stats") == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["edit", "apply", "--model", str(directory), "--edits", str(good), "--method", "rome",
                 "--out", str(tmp_path / "out"), "--stats-dir", str(tmp_path / "stats")]) == 2
    assert "stats.corpus" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "stats", ignore_errors=True)


def test_edit_apply_from_yaml(facts, tmp_path, capsys):
    """`mmadapt edit apply EDIT.yaml`: method, its hyper-parameters and the requests file (relative to the YAML)."""
    directory, world = facts.directory, facts.world
    subjects = list(world)
    (tmp_path / "cfg").mkdir()
    write_edits(tmp_path / "cfg" / "facts.jsonl", world, subjects[:1], subjects[5:7])
    config = tmp_path / "cfg" / "edit.yaml"
    config.write_text("method: ft\nhparams:\n  norm_constraint: 0.05\nrequests: facts.jsonl\n")
    out = tmp_path / "edited"
    assert main(["edit", "apply", str(config), "--model", str(directory / "llm"), "--out", str(out)]) == 0
    record = json.loads((out / "edit" / "edit.json").read_text())
    assert record["method"] == "ft" and record["hparams"]["norm_constraint"] == 0.05
    assert len(record["requests"]) == 1

    config.write_text("method: ft\nhparam: {}\nrequests: facts.jsonl\n")  # a misspelt key is named, exit 2
    assert main(["edit", "apply", str(config), "--model", str(directory / "llm"), "--out", str(tmp_path / "x")]) == 2
    assert "hparam" in capsys.readouterr().err
    assert main(["edit", "apply", "--model", str(directory / "llm"), "--out", str(tmp_path / "y")]) == 2
