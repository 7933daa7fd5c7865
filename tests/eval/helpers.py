"""Shared helpers for the eval tests: a tiny saved model and JSONL writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def save_tiny(make_model_config, path: Path, image: bool = True, seed: int = 0) -> Path:
    """A tiny MultimodalLM (2-layer llama, hidden 32, optional ViT) with random weights, saved to `path`."""
    from mmadapt.model import MultimodalLM

    torch.manual_seed(seed)
    model = MultimodalLM.from_config(make_model_config(image=image))
    model.save_pretrained(path)
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def independent_logprob(model: Any, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """Sum log-probability of `answer_ids` after `prompt_ids`, one unpadded sequence through the plain LLM."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model.llm(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return float(sum(logprobs[len(prompt_ids) - 1 + i, t] for i, t in enumerate(answer_ids)))


def save_hf(tokenizer_dir, path, seed: int):
    """A plain HF tiny llama (random weights) with the test tokenizer, and a manifest."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmadapt.quickstart.tiny import tiny_llm_config

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = tiny_llm_config("llama", vocab_size=len(tok), hidden=32, heads=2)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    from mmadapt.lineage import write_manifest

    write_manifest(path, kind="model")
    return path
