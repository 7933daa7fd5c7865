"""Merging mmadapt multimodal checkpoints: LLM and connectors merged, encoders must match, output loads as MultimodalLM."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import perturbed

from mmadapt.errors import ConfigError
from mmadapt.merge.lazy import load_dir
from mmadapt.merge.merge import load_merge_config, run_merge
from mmadapt.model import MultimodalLM


def _perturb_(module, seed, scale=0.02):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


@pytest.fixture
def checkpoints(tmp_path, tokenizer):
    """A tiny ViT + linear connector + Llama checkpoint, and two 'fine-tunes' (LLM + connector moved, encoder frozen)."""
    from mmadapt.config import LLMConfig, ModelConfig
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder

    config = ModelConfig(llm=LLMConfig(config=tiny_llm_config("llama", hidden=32), tokenizer=str(tmp_path / "tok")),
                         encoders={"image": tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1)},
                         connectors={"image": {"name": "linear"}})
    torch.manual_seed(0)
    base = MultimodalLM.from_config(config)
    root = tmp_path / "mm"  # beside the `family` fixture's dirs, not over them
    dirs = {"base": base.save_pretrained(root / "base", manifest={"kind": "train"})}
    for i, name in enumerate("ab"):
        model = MultimodalLM.from_pretrained(dirs["base"])
        _perturb_(model.llm, seed=10 + i)
        _perturb_(model.connectors, seed=20 + i)
        dirs[name] = model.save_pretrained(root / name, manifest={"kind": "train", "inputs": [dirs["base"]]})
    return dirs


def test_multimodal_checkpoints_merge_llm_and_connectors(checkpoints, tmp_path):
    out = tmp_path / "merged"
    summary = run_merge(load_merge_config({
        "method": "task_arithmetic", "base_model": str(checkpoints["base"]), "parameters": {"scaling": 0.5},
        "models": [{"model": str(checkpoints["a"])}, {"model": str(checkpoints["b"])}]}), out)
    assert summary["multimodal_tensors"] > 0
    mm = {k: load_dir(checkpoints[k], "multimodal") for k in ("base", "a", "b")}
    llm = {k: load_dir(checkpoints[k] / "llm") for k in ("base", "a", "b")}
    merged_mm, merged_llm = load_dir(out, "multimodal"), load_dir(out / "llm")
    for name, tensor in merged_mm.items():
        expected = mm["base"][name] + 0.5 * ((mm["a"][name] - mm["base"][name]) + (mm["b"][name] - mm["base"][name]))
        torch.testing.assert_close(tensor, expected, msg=name)
        if name.startswith("encoders."):
            assert torch.equal(tensor, mm["base"][name])
    assert any(n.startswith("connectors.") and not torch.equal(t, mm["base"][n]) for n, t in merged_mm.items())
    for name, tensor in merged_llm.items():
        torch.testing.assert_close(tensor, llm["base"][name] + 0.5 * (llm["a"][name] + llm["b"][name] - 2 * llm["base"][name]))
    model = MultimodalLM.from_pretrained(out)  # loads with the core, no original files needed
    images = torch.randn(1, 3, 16, 16)
    ids = torch.tensor([[model.placeholder_id("image")] * model.num_media_tokens("image") + [5, 6]])
    assert torch.isfinite(model(ids, media={"image": images}).logits).all()


def test_checkpoints_with_different_encoders_are_refused(checkpoints, tmp_path):
    model = MultimodalLM.from_pretrained(checkpoints["a"])
    _perturb_(model.encoders, seed=99)
    trained = model.save_pretrained(tmp_path / "enc", manifest={"kind": "train", "inputs": [checkpoints["base"]]})
    with pytest.raises(ConfigError, match=r"models\[1\] \(.*enc\): tensor encoders\.image\.\S+ differs from base_model "
                                          r".*encoders must be identical"):
        run_merge(load_merge_config({"method": "ties", "base_model": str(checkpoints["base"]),
                                     "models": [{"model": str(checkpoints["a"])}, {"model": str(trained)}]}),
                  tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_checkpoint_with_an_llm_adapter_merges_its_effective_weights(checkpoints, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = MultimodalLM.from_pretrained(checkpoints["base"])
    model.llm = get_peft_model(model.llm, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    _perturb_(model.llm, seed=5, scale=0.1)  # moves the adapter factors (and the base: the adapter run saves both)
    adapted = model.save_pretrained(tmp_path / "adapted", manifest={"kind": "train", "inputs": [checkpoints["base"]]})
    assert (adapted / "llm_adapter").is_dir()
    effective = {k: v for k, v in model.llm.merge_and_unload().state_dict().items()}
    out = tmp_path / "merged"
    run_merge(load_merge_config({"method": "linear", "models": [{"model": str(adapted)}]}), out)
    merged = load_dir(out / "llm")
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, effective[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not (out / "llm_adapter").exists()
    assert MultimodalLM.from_pretrained(out) is not None


def test_mixing_checkpoint_kinds_is_refused(checkpoints, family, tmp_path):
    with pytest.raises(ConfigError, match="models mix kinds"):
        run_merge(load_merge_config({"method": "linear", "models": [{"model": str(checkpoints["a"])},
                                                                    {"model": str(family["a"])}]}), tmp_path / "x")
    assert perturbed  # helper shared with the other merge tests


def test_adapters_on_a_checkpoint_base_give_a_checkpoint(checkpoints, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    base = MultimodalLM.from_pretrained(checkpoints["base"])
    adapter = get_peft_model(copy.deepcopy(base.llm), LoraConfig(r=2, lora_alpha=2, target_modules=["v_proj"]))
    with torch.no_grad():  # only the adapter factors train
        for name, p in adapter.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    adapter.save_pretrained(tmp_path / "adapter")
    effective = adapter.merge_and_unload().state_dict()
    out = tmp_path / "merged"
    run_merge(load_merge_config({"method": "task_arithmetic", "base_model": str(checkpoints["base"]),
                                 "models": [{"model": str(tmp_path / "adapter")}]}), out)
    assert (out / "mmadapt_model.yaml").is_file()
    assert load_dir(out, "multimodal").keys() == load_dir(checkpoints["base"], "multimodal").keys()
    for name, tensor in load_dir(out, "multimodal").items():
        assert torch.equal(tensor, load_dir(checkpoints["base"], "multimodal")[name])  # connectors as the base's
    merged = load_dir(out / "llm")
    weight = "model.layers.0.self_attn.v_proj.weight"
    torch.testing.assert_close(merged[weight], effective[weight], rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged[weight], load_dir(checkpoints["base"] / "llm")[weight])
    assert MultimodalLM.from_pretrained(out) is not None
