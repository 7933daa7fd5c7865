"""Helpers for the merge tests: tiny Llama configs, saving with lineage, perturbed copies standing in for fine-tunes."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"


def tiny_config(vocab_size: int, hidden: int = 32, **overrides):
    from transformers import AutoConfig

    from mmadapt.quickstart.tiny import tiny_llm_config

    spec = tiny_llm_config("llama", vocab_size=vocab_size, hidden=hidden, layers=2, heads=4)
    spec.update(overrides)
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def save_model(model, directory: Path, tokenizer=None, shard: str | None = "30KB", parents: list[Path] | None = None) -> Path:
    """save_pretrained (sharded when `shard`) + tokenizer + a manifest naming `parents` (lineage)."""
    from mmadapt.lineage import write_manifest

    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    write_manifest(directory, "train", inputs=parents or [])
    return directory


def perturbed(model, seed: int, scale: float = 0.02):
    """A copy of `model` with every float parameter moved by scale * N(0, 1): a stand-in for a fine-tune."""
    import copy

    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return clone
