"""The one tiny-model builder the tests share: a word-level tokenizer, a tiny LLM (+ a tiny ViT and connector)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def word_tokenizer(directory: Path, texts: list[str], extra_tokens: tuple[str, ...] = ("<image>",)) -> Path:
    """A word-level tokenizer (ChatML template) over `texts`, saved to `directory`; built offline in milliseconds."""
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    train_word_tokenizer(texts, directory, extra_tokens=list(extra_tokens))
    return directory


def model_spec(tokenizer_dir: Path, image: bool = False, model_type: str = "llama", hidden: int = 32, layers: int = 1,
               heads: int = 4, max_positions: int = 512, connector: dict[str, Any] | None = None,
               image_size: int = 32) -> dict[str, Any]:
    """A ModelConfig mapping: a tiny `model_type` LM built from its config, plus (with `image`) a one-block timm ViT
    (8-pixel patches) and a connector (default: linear)."""
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder

    spec: dict[str, Any] = {"llm": {"config": tiny_llm_config(model_type, hidden=hidden, layers=layers, heads=heads,
                                                              max_positions=max_positions),
                                    "tokenizer": str(tokenizer_dir)}}
    if image:
        spec["encoders"] = {"image": tiny_vit_encoder(image_size=image_size, patch_size=8, width=32, depth=1)}
        spec["connectors"] = {"image": connector or {"name": "linear"}}
    return spec


def model_config(spec: dict[str, Any]):
    """The ModelConfig of a `model_spec` mapping."""
    from mmadapt.config import ModelConfig, from_dict

    return from_dict(ModelConfig, spec)


def build_model(spec: dict[str, Any]):
    """A MultimodalLM built from a `model_spec` mapping (random weights, seeded by the caller)."""
    from mmadapt.model import MultimodalLM

    return MultimodalLM.from_config(model_config(spec))


def causal_lm(model_type: str, vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0, **overrides: Any):
    """A random tiny Hugging Face causal LM of `model_type` (no mmadapt wrapper), seeded, in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmadapt.quickstart.tiny import tiny_llm_config

    torch.manual_seed(seed)
    spec = {**tiny_llm_config(model_type, vocab_size=vocab_size, hidden=hidden, layers=layers), **overrides}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec)).eval()
