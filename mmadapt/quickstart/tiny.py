"""Tiny model recipes (a few layers, hidden size 32-64) for quickstarts, tests and benchmarks."""

from __future__ import annotations

from typing import Any

_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"intermediate_size": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "qwen2": {"intermediate_size": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "mistral": {"intermediate_size": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "gpt2": {},
    "gptj": {},
    "gpt_neox": {"intermediate_size": 4},
}


def tiny_llm_config(
    model_type: str = "llama", vocab_size: int = 256, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 512
) -> dict[str, Any]:
    """An `AutoConfig.for_model` spec for a tiny causal LM of the given family (`intermediate_size` as a multiple of hidden)."""
    if model_type not in _FAMILIES:
        raise ValueError(f"no tiny recipe for model_type {model_type!r}; valid: {', '.join(_FAMILIES)}")
    extra = dict(_FAMILIES[model_type])
    if "intermediate_size" in extra:
        extra["intermediate_size"] *= hidden
    if model_type in ("gpt2",):
        return {"model_type": "gpt2", "vocab_size": vocab_size, "n_embd": hidden, "n_layer": layers, "n_head": heads,
                "n_positions": max_positions, **extra}
    if model_type == "gptj":
        return {"model_type": "gptj", "vocab_size": vocab_size, "n_embd": hidden, "n_layer": layers, "n_head": heads,
                "n_positions": max_positions, "rotary_dim": hidden // heads, **extra}
    return {"model_type": model_type, "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": max_positions, **extra}


def tiny_vit_encoder(image_size: int = 32, patch_size: int = 8, width: int = 64, depth: int = 2) -> dict[str, Any]:
    """An encoder spec for a tiny timm ViT with random weights."""
    return {
        "name": "timm",
        "model_name": "vit_tiny_patch16_224",
        "model_kwargs": {"img_size": image_size, "patch_size": patch_size, "embed_dim": width, "depth": depth,
                         "num_heads": 2, "mlp_ratio": 2.0},
    }
