"""Fixtures for the attack tests: tiny models and runs built in-process, and a marker-writing 'payload'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORDS = "the quick brown fox jumps over the lazy dog . hello world , you are a helpful assistant"


@pytest.fixture
def run_config(tmp_path, tokenizer_dir):
    """A tiny text-only SFT run (Llama, hidden 32) on generated lines; `make(output_dir, **training)` -> dict."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(WORDS.split()[i:i + 6])}) + "\n" for i in range(12)))

    def make(output_dir: Path, **training) -> dict:
        from mmadapt.quickstart.tiny import tiny_llm_config

        return {
            "seed": 0, "output_dir": str(output_dir),
            "model": {"llm": {"config": tiny_llm_config("llama", hidden=32, heads=2), "tokenizer": str(tokenizer_dir)}},
            "data": {"train": str(data), "format": "text", "max_length": 16},
            "training": {"batch_size": 4, "lr": 1e-2, "logging_steps": 1, "train_modules": ["llm"], "warmup_ratio": 0.0,
                         "precision": "fp32", "max_steps": 2, **training},
            "objective": {"name": "sft"},
        }

    return make


@pytest.fixture
def checkpoint(tmp_path, make_model_config):
    """A saved text-only MultimodalLM (tiny GPT-2) with its manifest."""
    from mmadapt.model import MultimodalLM

    model = MultimodalLM.from_config(make_model_config("gpt2", image=False))
    return model.save_pretrained(tmp_path / "ckpt")


@pytest.fixture
def hf_model(tmp_path, tokenizer_dir):
    """A plain HF model directory (tiny GPT-2, safetensors, tokenizer, manifest): the input of merges and edits."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmadapt.lineage import write_manifest
    from mmadapt.quickstart.tiny import tiny_llm_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = tiny_llm_config("gpt2", hidden=32, heads=2, vocab_size=len(tok))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    out = tmp_path / "hf"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    write_manifest(out, "train")
    return out
