"""Tiny merge inputs built in-process: a Llama base and 'fine-tunes' of it (base + small noise), sharded, with manifests."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import WORDS, perturbed, save_model, tiny_config


@pytest.fixture
def tokenizer(tmp_path):
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    return train_word_tokenizer([WORDS], out_dir=tmp_path / "tok")


@pytest.fixture
def family(tmp_path, tokenizer):
    """{"base": dir, "a": dir, "b": dir, "c": dir}: a tiny Llama and three perturbed copies (sharded, with lineage)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer)))
    dirs = {"base": save_model(base, tmp_path / "base", tokenizer)}
    for i, name in enumerate("abc"):
        dirs[name] = save_model(perturbed(base, seed=i + 1), tmp_path / name, tokenizer, parents=[dirs["base"]])
    return dirs
