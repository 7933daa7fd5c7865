"""The model surface the server decodes through, and loading any servable directory behind it.

A servable model is what `mmadapt.generate.generate_batch` already drives: `tokenizer`, `encoders`
(modality -> encoder with `preprocess`; empty for text-only) or `modalities` plus a `processor` (HF VLMs),
`device`, `eval()`, and `generate(input_ids, attention_mask, media, **hf_generate_kwargs)` returning the new
token ids only. MultimodalLM and HFVisionLM have it; `PlainCausalLM` gives it to a bare HF causal LM. A new
model kind plugs in by providing these members and a branch in `load_servable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmadapt.errors import ConfigError, NotAModelError


class PlainCausalLM(nn.Module):
    """A Hugging Face causal LM directory (no mmadapt files) under the servable surface: text only."""

    def __init__(self, llm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoders: dict[str, nn.Module] = {}

    @classmethod
    def from_pretrained(cls, directory: str | Path, trust_remote_code: bool = False) -> "PlainCausalLM":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
            llm = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{directory}: cannot load a Hugging Face causal LM and its tokenizer: {e}") from e
        if tokenizer.pad_token_id is None:  # batched decoding left-pads; EOS is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        return cls(llm, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 media: dict[str, torch.Tensor] | None = None, **generate_kwargs: Any) -> torch.Tensor:
        """New token ids only (prompts left-padded)."""
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        out = self.llm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        return out[:, input_ids.shape[1]:]


def load_servable(directory: str | Path, trust_remote_code: bool = False) -> Any:
    """An mmadapt checkpoint, a supported HF VLM directory, or a plain HF causal LM directory."""
    from mmadapt.factory import checkpoint_format, load_model

    directory = Path(directory)
    kind = checkpoint_format(directory, f"model {directory}")
    if kind == "adapter":
        raise NotAModelError(f"model {directory}: a peft adapter; merge it into its base model first (mmadapt export "
                             "--merge-adapters) and serve that")
    if kind == "hf":
        model = PlainCausalLM.from_pretrained(directory, trust_remote_code=trust_remote_code)
    else:
        model = load_model(directory, trust_remote_code=trust_remote_code)
    model.eval()
    return model


def modalities(model: Any) -> tuple[str, ...]:
    return tuple(getattr(model, "modalities", None) or tuple(model.encoders))


def context_length(model: Any, default: int = 2048) -> int:
    """Positions the language model can attend over (prompt + generated tokens)."""
    config = None
    for attr in ("llm", "hf"):
        inner = getattr(model, attr, None)
        if inner is not None:
            config = inner.config
            break
    if config is None:
        return default
    config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def eos_ids(model: Any) -> set[int]:
    """Every token id that ends an answer (the tokenizer's EOS and the generation config's, which may be a list)."""
    ids: set[int] = set()
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    for attr in ("llm", "hf"):
        config = getattr(getattr(model, attr, None), "generation_config", None)
        value = getattr(config, "eos_token_id", None)
        if value is not None:
            ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return ids

