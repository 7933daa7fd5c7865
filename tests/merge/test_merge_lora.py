"""LoRA adapters: merged into a base (== peft's merge_and_unload), merged with each other, combined into one by SVD."""

from __future__ import annotations

import json

import pytest
import torch
from merge_helpers import tiny_config

from mmadapt.errors import ConfigError
from mmadapt.merge.lazy import load_dir
from mmadapt.merge.lora import Adapter, lora_delta, lora_factors
from mmadapt.merge.merge import load_merge_config, run_merge


def make_adapter(base_model, directory, seed, targets=("q_proj", "v_proj", "down_proj"), r=4, alpha=8, **kw):
    """A peft LoRA adapter on `base_model` with random (non-zero) A and B, saved to `directory`."""
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(base_model), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **kw))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    model.save_pretrained(directory)
    return model


@pytest.fixture
def lora_family(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer)))
    base.save_pretrained(tmp_path / "base", max_shard_size="30KB")
    tokenizer.save_pretrained(tmp_path / "base")
    peft_a = make_adapter(base, tmp_path / "ad_a", seed=1, rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 4})
    peft_b = make_adapter(base, tmp_path / "ad_b", seed=2, targets=("q_proj", "up_proj", "embed_tokens"), use_rslora=True)
    return {"base": tmp_path / "base", "a": tmp_path / "ad_a", "b": tmp_path / "ad_b", "peft_a": peft_a, "peft_b": peft_b}


def merged_reference(peft_model):
    import copy

    return {k: v for k, v in copy.deepcopy(peft_model).merge_and_unload().state_dict().items()}


def test_one_adapter_into_its_base_equals_peft_merge_and_unload(lora_family, tmp_path):
    for key in ("a", "b"):
        out = tmp_path / f"merged_{key}"
        run_merge(load_merge_config({"method": "linear", "base_model": str(lora_family["base"]),
                                     "models": [{"model": str(lora_family[key])}]}), out)
        merged = load_dir(out)
        reference = merged_reference(lora_family[f"peft_{key}"])
        assert merged.keys() <= reference.keys()
        for name, tensor in merged.items():
            torch.testing.assert_close(tensor, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_two_adapters_merged_into_the_base_with_task_arithmetic(lora_family, tmp_path):
    out = tmp_path / "merged"
    run_merge(load_merge_config({"method": "task_arithmetic", "base_model": str(lora_family["base"]),
                                 "models": [{"model": str(lora_family["a"]), "parameters": {"weight": 0.5}},
                                            {"model": str(lora_family["b"]), "parameters": {"weight": 2.0}}]}), out)
    merged, base = load_dir(out), load_dir(lora_family["base"])
    a = merged_reference(lora_family["peft_a"])
    b = merged_reference(lora_family["peft_b"])
    for name in merged:
        torch.testing.assert_close(merged[name], base[name] + 0.5 * (a[name] - base[name]) + 2.0 * (b[name] - base[name]),
                                   rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out) is not None  # a plain HF model, config and tokenizer copied


def test_lora_factors_are_the_best_low_rank_approximation():
    delta = torch.randn(20, 3) @ torch.randn(3, 12)  # rank 3
    a, b = lora_factors(delta, 3)
    torch.testing.assert_close(b @ a, delta, rtol=1e-4, atol=1e-4)
    a2, b2 = lora_factors(delta, 2)
    s = torch.linalg.svdvals(delta)
    assert (b2 @ a2 - delta).norm().item() == pytest.approx(s[2].item(), rel=1e-4)  # Eckart-Young
    a8, b8 = lora_factors(delta, 16)  # above min(out, in): zero padded to the requested rank
    assert a8.shape == (16, 12) and b8.shape == (20, 16)
    torch.testing.assert_close(b8 @ a8, delta, rtol=1e-4, atol=1e-4)
    emb = torch.randn(30, 8)  # stored transposed like embedding deltas
    a, b = lora_factors(emb, 8, transpose=True)
    torch.testing.assert_close(lora_delta(a, b, 1.0, transpose=True), emb, rtol=1e-4, atol=1e-4)


def test_adapters_combined_into_one_adapter_by_svd(lora_family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "combined"
    summary = run_merge(load_merge_config({
        "method": "linear", "base_model": str(lora_family["base"]), "output": "adapter",
        "models": [{"model": str(lora_family["a"])}, {"model": str(lora_family["b"])}]}), out)
    assert summary["rank"] == 8  # default: the sum of the inputs' ranks (lossless for linear merges)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 8
    a, b = Adapter(lora_family["a"], "a"), Adapter(lora_family["b"], "b")
    combined = Adapter(out, "combined")
    assert set(combined.modules) == set(a.modules) | set(b.modules)
    for target in combined.modules:
        parts = [x.delta(target) for x in (a, b) if target in x.modules]
        expected = sum(parts) / 2 if len(parts) == 2 else parts[0] / 2  # a missing module contributes zero
        torch.testing.assert_close(combined.delta(target), expected, rtol=1e-4, atol=1e-5, msg=target)
    # peft loads it and the adapted model equals base + the averaged deltas
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_family["base"]), out).merge_and_unload()
    base = load_dir(lora_family["base"])
    weight = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(model.state_dict()[weight], base[weight] + (a.delta(weight) + b.delta(weight)) / 2,
                               rtol=1e-4, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"adapter_model.safetensors"}


def test_low_rank_combination_truncates_and_ties_runs_on_deltas(lora_family, tmp_path):
    out = tmp_path / "r2"
    run_merge(load_merge_config({"method": "ties", "base_model": str(lora_family["base"]), "output": "adapter",
                                 "adapter_rank": 2, "parameters": {"density": 0.5},
                                 "models": [{"model": str(lora_family["a"])}, {"model": str(lora_family["b"])}]}), out)
    combined = Adapter(out, "r2")
    target = "model.layers.0.self_attn.q_proj.weight"
    assert combined.rank(target) == 2
    assert torch.linalg.matrix_rank(combined.delta(target)) <= 2


def test_adapter_errors_name_the_adapter_and_tensor(lora_family, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError, match="base_model: required when models are LoRA adapters"):
        run_merge(load_merge_config({"method": "linear", "models": [{"model": str(lora_family["a"])}]}), tmp_path / "x")
    small = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), intermediate_size=64))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ConfigError, match=r"models\[0\] \(.*ad_a\): tensor model.layers.0.mlp.down_proj.weight: B @ A "
                                          r"has shape \[32, 128\] but base_model .* has \[32, 64\]"):
        run_merge(load_merge_config({"method": "linear", "base_model": str(tmp_path / "small"),
                                     "models": [{"model": str(lora_family["a"])}]}), tmp_path / "x")
    with pytest.raises(ConfigError, match="output: adapter combines LoRA adapter directories; the models are hf"):
        run_merge(load_merge_config({"method": "linear", "output": "adapter", "models": [
            {"model": str(lora_family["base"])}]}), tmp_path / "x")
    dora = tmp_path / "dora"
    make_adapter(AutoModelForCausalLM.from_pretrained(lora_family["base"]), dora, seed=3, use_dora=True)
    with pytest.raises(ConfigError, match="use_dora=true adapters cannot be merged"):
        run_merge(load_merge_config({"method": "linear", "base_model": str(lora_family["base"]),
                                     "models": [{"model": str(dora)}]}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_modules_to_save_replace_the_base_tensor(lora_family, tmp_path):
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(lora_family["base"])
    peft_model = make_adapter(base_model, tmp_path / "mts", seed=4, targets=("q_proj",), modules_to_save=["lm_head"])
    with torch.no_grad():
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.add_(1.0)
    peft_model.save_pretrained(tmp_path / "mts")
    out = tmp_path / "merged"
    run_merge(load_merge_config({"method": "linear", "base_model": str(lora_family["base"]),
                                 "models": [{"model": str(tmp_path / "mts")}]}), out)
    merged, reference = load_dir(out), merged_reference(peft_model)
    torch.testing.assert_close(merged["lm_head.weight"], reference["lm_head.weight"])
    with pytest.raises(ConfigError, match="modules_to_save"):
        run_merge(load_merge_config({"method": "linear", "base_model": str(lora_family["base"]), "output": "adapter",
                                     "models": [{"model": str(tmp_path / "mts")}]}), tmp_path / "y")
