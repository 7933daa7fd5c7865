"""The causal LM and its tokenizer from `model.llm`: a hub id, a directory, a peft adapter, or an AutoConfig spec."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mmadapt.config import LLMConfig
from mmadapt.errors import ConfigError, DataError
from mmadapt.peft_names import ADAPTER_CONFIG

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_tokenizer(llm: LLMConfig):
    from transformers import AutoTokenizer

    source = llm.tokenizer or llm.name_or_path
    if llm.tokenizer is None and not any(Path(source).glob("tokenizer*")):  # an adapter without its own tokenizer
        source = peft_adapter_base(source, "model.llm.name_or_path") or source
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=llm.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.llm.tokenizer: cannot load a tokenizer from {source!r}: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a corrupt or truncated file is a DataError naming it, not a Rust panic."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e}); restore it or re-create the checkpoint") from None


def load_llm(llm: LLMConfig, vocab_size: int) -> nn.Module:
    """The causal LM from a hub id / directory, or random weights from an AutoConfig spec."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": llm.trust_remote_code}
    if llm.attn_implementation:
        kwargs["attn_implementation"] = llm.attn_implementation
    if llm.config is not None:
        spec = dict(llm.config)
        model_type = spec.pop("model_type")
        spec["vocab_size"] = vocab_size  # the tokenizer decides; tiny recipes leave it open
        try:
            hf_config = AutoConfig.for_model(model_type, **spec)
        except ValueError as e:
            raise ConfigError(f"model.llm.config: {e}") from e
        model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
        return model.to(_DTYPES[llm.dtype]) if llm.dtype != "auto" else model
    base = peft_adapter_base(llm.name_or_path, "model.llm.name_or_path")
    try:
        model = AutoModelForCausalLM.from_pretrained(base or llm.name_or_path, dtype=_DTYPES[llm.dtype], **kwargs)
    except (OSError, SafetensorError) as e:  # missing, or a corrupt / truncated weight file
        if isinstance(e, SafetensorError):
            for f in sorted(Path(base or llm.name_or_path).glob("*.safetensors")):
                read_weights(f)  # names the corrupt file (transformers' message names none)
        raise ConfigError(f"model.llm.name_or_path: cannot load {base or llm.name_or_path!r}: {e}") from e
    if base is None:
        return model
    # A plain peft adapter directory: its base model wrapped with that adapter, which keeps training (a run with
    # its own `peft:` section merges it first and trains a new one on top); never a second LoRA stacked inside.
    from peft import PeftModel

    logger.info("model.llm.name_or_path is a peft adapter on %s: continuing it", base)
    return PeftModel.from_pretrained(model, llm.name_or_path, is_trainable=True)



def peft_adapter_base(path: str | Path | None, where: str) -> str | None:
    """The base model of a peft adapter directory (None when `path` is not one)."""
    import json

    config = Path(path) / ADAPTER_CONFIG if path else None
    if config is None or not config.is_file():
        return None
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{where}: {config} is unreadable: {e}") from e
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: {config} names no base_model_name_or_path; load the base model and pass this "
                          "adapter as the adapter of that model")
    return base
