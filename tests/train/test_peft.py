"""PEFT: LoRA / DoRA / rsLoRA through peft, adapters round-trip through plain peft, export, the text-only LoRA path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmadapt.config import PeftConfig
from mmadapt.run_config import load_run
from mmadapt.errors import ConfigError
from mmadapt.adapters import adapters_disabled, merged_state_dict
from mmadapt.export import export
from mmadapt.train.peft import apply_peft
from pref_utils import build_model, colour_pairs, make_tokenizer, text_model_spec, vision_model_spec, write_jsonl


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def ids(model, text="what colour is the apple ?"):
    return torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])


def perturb_adapters(model, scale=0.3):
    """Stand-in for training: fresh LoRA B matrices are zero, which would make every check trivial."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                param.add_(torch.randn_like(param) * scale)


def lora_modules(model):
    return sorted({n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n})


def test_lora_on_the_llm_freezes_the_base(tok, caplog):
    model = build_model(text_model_spec(tok))
    caplog.set_level("INFO")
    apply_peft(model, PeftConfig(r=4, alpha=8))
    assert lora_modules(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert "adapter parameters" in caplog.text
    with torch.no_grad():  # fresh adapters are a no-op
        base = model.llm.get_base_model()
        with adapters_disabled(model):
            off = model(input_ids=ids(model)).logits
        assert torch.equal(off, model(input_ids=ids(model)).logits)
        assert base is model.llm.get_base_model()


def test_target_modules_by_name_or_pattern(tok):
    model = build_model(text_model_spec(tok))
    apply_peft(model, PeftConfig(target_modules=["q_proj", "v_proj"]))
    assert lora_modules(model) == ["q_proj", "v_proj"]
    model = build_model(text_model_spec(tok))
    apply_peft(model, PeftConfig(target_modules=r".*layers\.0\.self_attn\.(q|k)_proj"))
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(names) == 2 and all("layers.0." in n for n in names)
    with pytest.raises(ConfigError, match="peft.target_modules: .*matches no module of the LLM.*q_proj"):
        apply_peft(build_model(text_model_spec(tok)), PeftConfig(target_modules=["c_attn"]))


def test_dora_and_rslora(tok):
    model = build_model(text_model_spec(tok))
    apply_peft(model, PeftConfig(method="dora", r=4, alpha=8, target_modules=["q_proj"]))
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    model = build_model(text_model_spec(tok))
    apply_peft(model, PeftConfig(r=4, alpha=8, rslora=True, target_modules=["q_proj"]))
    layer = model.llm.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # alpha / sqrt(r), not alpha / r


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_qlora_without_cuda_is_a_clear_config_error(tok):
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*peft.quantization: none"):
        apply_peft(build_model(text_model_spec(tok)), PeftConfig(quantization="4bit"))


def test_encoder_adapters_fold_into_plain_weights(tok):
    model = build_model(vision_model_spec(tok))
    original_keys = set(model.encoders["image"].state_dict())
    connector_trainable = [p.requires_grad for p in model.connectors.parameters()]
    apply_peft(model, PeftConfig(r=4, apply_to=["llm", "encoders"]))
    assert any("lora_A" in n for n, _ in model.encoders.named_parameters())
    assert [p.requires_grad for p in model.connectors.parameters()] == connector_trainable  # connector untouched
    perturb_adapters(model)
    model.eval()  # LoRA dropout off
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = model.encoders["image"](images)
        state = merged_state_dict(model.encoders["image"])
        assert set(state) == original_keys
        fresh = build_model(vision_model_spec(tok)).encoders["image"].eval()
        fresh.load_state_dict(state)
        assert torch.allclose(fresh(images), adapted, atol=1e-5)
        with adapters_disabled(model):  # encoders switch off too
            assert not torch.allclose(model.encoders["image"](images), adapted, atol=1e-3)


@pytest.fixture(scope="module")
def adapter_checkpoint(tok, tmp_path_factory):
    model = build_model(text_model_spec(tok))
    apply_peft(model, PeftConfig(r=4, alpha=8))
    perturb_adapters(model)
    model.eval()
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(directory)
    with torch.no_grad():
        logits = model(input_ids=ids(model)).logits
        with adapters_disabled(model):
            base_logits = model(input_ids=ids(model)).logits
    return directory, logits, base_logits


def test_adapters_round_trip_through_plain_peft(adapter_checkpoint):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, logits, base_logits = adapter_checkpoint
    assert (directory / "llm_adapter" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(directory / "llm")  # plain HF: no mmadapt, no adapter keys
    tokenizer = AutoTokenizer.from_pretrained(directory / "llm")
    x = ids(type("M", (), {"tokenizer": tokenizer}))
    with torch.no_grad():
        assert torch.allclose(base(input_ids=x).logits, base_logits, atol=1e-5)
        peft_model = PeftModel.from_pretrained(base, directory / "llm_adapter")
        assert torch.allclose(peft_model(input_ids=x).logits, logits, atol=1e-5)
    assert not torch.allclose(logits, base_logits, atol=1e-3)


def test_export_merges_adapters_with_equal_outputs(adapter_checkpoint, tmp_path):
    from mmadapt.cli import main
    from mmadapt.lineage import read_manifest
    from mmadapt.model import MultimodalLM

    directory, logits, _ = adapter_checkpoint
    out = export(directory, tmp_path / "merged", merge=True)
    assert not (out / "llm_adapter").exists()
    merged = MultimodalLM.from_pretrained(out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids(merged)).logits, logits, atol=1e-5)
    manifest = read_manifest(out)
    assert manifest["kind"] == "export" and manifest["parents"][0]["path"] == str(directory)
    assert main(["export", "--model", str(directory), "--out", str(tmp_path / "cli"), "--merge-adapters"]) == 0
    assert (tmp_path / "cli" / "llm" / "model.safetensors").is_file()
    assert main(["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_text_only_sft_then_dpo_with_lora(tok, tmp_path):
    """Domain adaptation on a plain HF causal LM: SFT with LoRA, merge, DPO with LoRA, on the one trainer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.train.run import train

    tokenizer = AutoTokenizer.from_pretrained(tok)
    spec = tiny_llm_config("llama", vocab_size=len(tokenizer), hidden=32, layers=2, max_positions=128)
    spec["initializer_range"] = 0.3  # a random head with std 0.02 caps logits near uniform; LoRA cannot change it
    hf_dir = tmp_path / "hf-llm"
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec)).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    pairs, _ = colour_pairs()
    pairs = pairs[:16]
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": [
        {"from": "human", "value": p["prompt"]}, {"from": "gpt", "value": p["chosen"]}]} for p in pairs])
    pref_data = write_jsonl(tmp_path / "pref.jsonl", pairs)
    training = {"batch_size": 8, "lr": 0.01, "warmup_ratio": 0.0, "scheduler": "constant", "logging_steps": 5,
                "train_modules": ["llm"]}
    peft = {"r": 8, "alpha": 16, "dropout": 0.0}

    sft = load_run({"model": {"llm": {"name_or_path": str(hf_dir)}}, "peft": peft, "output_dir": str(tmp_path / "sft"),
                    "data": {"train": str(sft_data), "eval": str(sft_data)},
                    "training": {**training, "max_steps": 30}})
    sft_metrics = train(sft)
    assert (tmp_path / "sft" / "llm_adapter" / "adapter_model.safetensors").is_file()
    first_loss = json.loads((tmp_path / "sft" / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert sft_metrics["eval_loss"] < 0.5 * first_loss

    merged = export(tmp_path / "sft", tmp_path / "sft-merged", merge=True)
    dpo = load_run({"model": {"llm": {"name_or_path": str(hf_dir)}, "init_from": str(merged)}, "peft": peft,
                    "output_dir": str(tmp_path / "dpo"), "objective": {"name": "dpo", "beta": 0.5},
                    "data": {"train": str(pref_data), "eval": str(pref_data), "format": "preference"},
                    "training": {**training, "max_steps": 20}})
    metrics = train(dpo)
    saved = json.loads((tmp_path / "dpo" / "metrics.json").read_text())
    for key in ("train_rewards_chosen", "train_rewards_rejected", "train_rewards_margin",
                "train_preference_accuracy", "train_logps_chosen", "eval_rewards_margin", "eval_logps_rejected"):
        assert key in saved, key
    assert metrics["eval_preference_accuracy"] >= 0.9 and metrics["eval_rewards_margin"] > 0
    assert (tmp_path / "dpo" / "llm_adapter").is_dir()


def test_dpo_example_config_is_valid():
    from pathlib import Path

    config = load_run(Path(__file__).parents[2] / "examples" / "dpo_lora.yaml")
    assert config.objective["name"] == "dpo" and config.peft.r == 16 and config.data.format == "preference"
