"""`mmadapt merge`: streamed == in memory, outputs load and carry lineage, bad inputs fail before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from mmadapt import lineage, registry
from mmadapt.cli import main
from mmadapt.errors import ConfigError
from mmadapt.merge.lazy import load_dir
from mmadapt.merge.merge import load_merge_config, merge_state_dicts, run_merge
from mmadapt.merge.params import ParamResolver

from merge_helpers import perturbed, save_model, tiny_config

CASES = {
    "linear": {"models_params": [{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}]},
    "task_arithmetic": {"params": {"scaling": 0.8}, "models_params": [{"weight": 0.5}] * 3},
    "ties": {"params": {"scaling": 1.2}, "models_params": [{"weight": 1.0, "density": 0.5}] * 3},
    "dare_linear": {"models_params": [{"weight": 0.6, "density": 0.4}] * 3},
    "dare_ties": {"params": {"normalize": False}, "models_params": [{"weight": 1.0, "density": 0.7}] * 3},
    "slerp": {"params": {"t": [{"filter": "self_attn", "value": [0.2, 0.8]}, {"value": 0.5}]}, "models_params": [{}, {}]},
}


def config_for(method, family, **extra):
    case = CASES[method]
    names = "abc"[: len(case["models_params"])]
    data = {"method": method, "base_model": str(family["base"]),
            "models": [{"model": str(family[n]), "parameters": p} for n, p in zip(names, case["models_params"])],
            "parameters": case.get("params", {}), "max_shard_size_mb": 0.02, **extra}
    if method == "slerp":  # without base_model, models[0] is slerp's t = 0 end (with one, the base is)
        del data["base_model"]
    return data


@pytest.mark.parametrize("method", list(CASES))
def test_streamed_merge_equals_the_in_memory_merge(method, family, tmp_path):
    data = config_for(method, family)
    config = load_merge_config(data)
    out = tmp_path / "merged"
    run_merge(config, out)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1  # sharded output
    streamed = load_dir(out)
    base = load_dir(family["base"])
    models = [load_dir(m.model) for m in config.models]
    resolver = ParamResolver([m.parameters for m in config.models], config.parameters, base, config.seed)
    in_memory = merge_state_dicts(registry.resolve("merge_method", method), base, models, resolver)
    assert streamed.keys() == in_memory.keys()
    for name in streamed:
        assert torch.equal(streamed[name], in_memory[name]), name


def test_merged_model_loads_and_records_its_lineage(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    run_merge(load_merge_config(config_for("ties", family)), out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(family["base"]).get_vocab()
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "merge" and manifest["method"] == "ties"
    assert manifest["parameters"]["global"] == {"scaling": 1.2}
    assert manifest["parameters"]["models"][str(family["a"])] == {"weight": 1.0, "density": 0.5}
    assert [p["path"] for p in manifest["parents"]] == [str(family[k]) for k in ("base", "a", "b", "c")]
    assert manifest["parents"][1]["parents"][0]["path"] == str(family["base"])  # the inputs' own manifests
    assert set(manifest["files"]) == {p.name for p in out.glob("*.safetensors")}
    assert lineage.verify(out) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # atomic: no temp dirs left


def test_slerp_schedule_per_module_and_layer(family, tmp_path):
    data = config_for("slerp", family)
    data["parameters"] = {"t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 1.0},
                                {"value": 0.0}]}
    out = tmp_path / "merged"
    run_merge(load_merge_config(data), out)
    merged, a, b = load_dir(out), load_dir(family["a"]), load_dir(family["b"])
    assert torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], a["model.layers.0.self_attn.q_proj.weight"])
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"], b["model.layers.1.self_attn.q_proj.weight"])
    torch.testing.assert_close(merged["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_output_dtype_is_applied_to_weights_and_config(family, tmp_path):
    out = tmp_path / "merged"
    run_merge(load_merge_config(config_for("linear", family, dtype="bfloat16")), out)
    assert all(t.dtype == torch.bfloat16 for t in load_dir(out).values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_merges_and_reports_bad_configs_with_exit_code_2(family, tmp_path, capsys):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config_for("task_arithmetic", family)))
    assert main(["merge", str(path), "--out", str(tmp_path / "m"), "--set", "parameters.scaling=0.5"]) == 0
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["config"]["parameters"]["scaling"] == 0.5
    assert main(["merge", str(path), "--out", str(tmp_path / "m2"), "--set", "method=tie"]) == 2
    err = capsys.readouterr().err
    assert "unknown merge_method 'tie'" in err and "did you mean 'ties'" in err
    assert not (tmp_path / "m2").exists()


@pytest.mark.parametrize("change, message", [
    ({"method": "ties", "base_model": None}, "base_model: ties adds task vectors"),
    ({"method": "slerp", "base_model": None}, "slerp merges exactly 2 models, got 3"),
    ({"method": "slerp"}, "slerp interpolates from base_model .* to exactly 1 other model"),
    ({"parameters": {"t": 0.5}}, "parameters.t: not a task_arithmetic parameter; valid: scaling, normalize, weight"),
    ({"models": [{"model": "x", "parameters": {"density": 0.5}}]}, r"models\[0\].parameters.density: not a per-model"),
    ({"models": []}, "models: list at least one model"),
    ({"dtype": "float8"}, "dtype: 'float8' is not valid"),
    ({"modles": []}, "unknown key 'modles' \\(did you mean 'models'\\?\\)"),
])
def test_config_errors_name_the_key(family, change, message):
    data = {**config_for("task_arithmetic", family), **change}
    with pytest.raises(ConfigError, match=message):
        load_merge_config(data)


def _run_expecting(data, tmp_path, message):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        run_merge(load_merge_config(data), out)
    assert not out.exists()


def test_shape_mismatch_names_the_model_and_tensor(family, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    wide = save_model(AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), intermediate_size=96)),
                      tmp_path / "wide", tokenizer, parents=[family["base"]])
    data = config_for("ties", family)
    data["models"][1]["model"] = str(wide)
    _run_expecting(data, tmp_path, r"models\[1\] \(.*wide\): tensor model.layers.0.mlp.gate_proj.weight has shape "
                                   r"\[96, 32\] but base_model .* has \[128, 32\]")


def test_architecture_mismatch_is_refused(family, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = save_model(AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4,
                                                                             vocab_size=30)), tmp_path / "gpt2")
    data = config_for("linear", family)
    data["models"][2]["model"] = str(gpt2)
    _run_expecting(data, tmp_path, r"models\[2\] \(.*gpt2\): model_type 'gpt2' differs from base_model .*'llama'")


def test_tokenizer_mismatch_is_refused(family, tmp_path):
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    other = tmp_path / "other_tok"
    shutil.copytree(family["b"], other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    # same size (so every tensor shape matches), one word different: ids would mean other tokens
    train_word_tokenizer(["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
                          "sigma upsilon"], out_dir=other)
    data = config_for("linear", family)
    data["models"][1]["model"] = str(other)
    _run_expecting(data, tmp_path, r"models\[1\] \(.*other_tok\): tokenizer differs from base_model .*: token '\w+' has id")


def test_models_not_descended_from_the_base_are_refused(family, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    stranger_base = save_model(AutoModelForCausalLM.from_config(tiny_config(len(tokenizer))), tmp_path / "sb", tokenizer)
    data = config_for("task_arithmetic", family)
    data["base_model"] = str(stranger_base)
    _run_expecting(data, tmp_path, r"models\[0\] .*: its manifest.json lineage does not contain base_model")
    out = tmp_path / "forced"
    run_merge(load_merge_config({**data, "check_base": False}), out)
    assert (out / "manifest.json").is_file()


def test_missing_and_unknown_inputs(family, tmp_path):
    data = config_for("linear", family)
    data["models"][0]["model"] = str(tmp_path / "nowhere")
    _run_expecting(data, tmp_path, r"models\[0\] \(.*nowhere\): no such directory")
    (tmp_path / "empty").mkdir()
    data["models"][0]["model"] = str(tmp_path / "empty")
    _run_expecting(data, tmp_path, r"models\[0\] \(.*empty\): not a model directory")


def test_a_failed_merge_leaves_an_existing_output_untouched(family, tmp_path):
    out = tmp_path / "merged"
    run_merge(load_merge_config(config_for("linear", family)), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = config_for("linear", family)
    bad["models"][0]["model"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError):
        run_merge(load_merge_config(bad), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_perturbed_helper_really_changes_weights(family):
    a, base = load_dir(family["a"]), load_dir(family["base"])
    assert all(not torch.equal(a[n], base[n]) for n in base)
    assert perturbed  # the fixture's models are distinct fine-tunes, so equalities above are meaningful


def test_models_without_lineage_are_merged_with_a_warning(family, tmp_path, caplog):
    (family["a"] / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger="mmadapt.merge.inputs"):
        run_merge(load_merge_config(config_for("ties", family)), tmp_path / "merged")
    assert "has no manifest.json; cannot check it was fine-tuned from base_model" in caplog.text
    parents = json.loads((tmp_path / "merged" / "manifest.json").read_text())["parents"]
    assert parents[1]["kind"] == "external" and parents[1]["files"]  # hashed instead


def test_linear_without_a_base_takes_files_from_the_first_model(family, tmp_path):
    data = config_for("linear", family)
    data.pop("base_model")
    out = tmp_path / "merged"
    run_merge(load_merge_config(data), out)
    assert (out / "tokenizer.json").read_text() == (family["a"] / "tokenizer.json").read_text()
    assert [p["path"] for p in json.loads((out / "manifest.json").read_text())["parents"]] == \
        [str(family[k]) for k in "abc"]
