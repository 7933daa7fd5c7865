"""Adapters on a built model: their peft config, find them, switch them off, fold them into the weights, save them in peft's layout.

What loading, saving and the DPO reference need of adapters, apart from training (which adds them:
mmadapt.train.peft), so the model never imports the training package.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from mmadapt.config import PeftConfig
from mmadapt.peft_names import unwrap_base_layer

ADAPTER_MARKERS = ("lora_",)  # lora_A / lora_B / lora_magnitude_vector (DoRA) / lora_embedding_*


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a peft adapter (and so trains whenever peft is on)."""
    return any(marker in name for marker in ADAPTER_MARKERS)


def _tuner_layers(module: nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(module: nn.Module) -> bool:
    return bool(_tuner_layers(module))


def lora_config(cfg: PeftConfig, target_modules: list[str] | str | None = None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        use_rslora=cfg.rslora,  # scale alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023)
        use_dora=cfg.method == "dora",
        target_modules=target_modules if target_modules is not None else cfg.target_modules,
        bias="none",
    )


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Switch every adapter in `model` off for the block (the reference model of DPO with LoRA)."""
    layers = [layer for layer in _tuner_layers(model) if not layer.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # re-activates the active adapter(s), trainable as before


def _fold_injected(module: nn.Module) -> None:
    """Merge injected adapters into their base layers and put the plain layers back, in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer) and name:
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, child.get_base_layer())


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with injected adapters folded in, under the original key names (module unchanged)."""
    if not has_adapters(module):
        return module.state_dict()
    clone = copy.deepcopy(module)
    _fold_injected(clone)
    return clone.state_dict()


def merge_adapters(model: Any) -> None:
    """Fold every adapter (LLM and encoders) into the weights, leaving a plain model."""
    from peft import PeftModel

    if hasattr(model, "merge_adapters"):  # an HF vision-language model folds its own
        model.merge_adapters()
        return

    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()
    for encoder in model.encoders.values():
        _fold_injected(encoder)


def save_peft_llm(llm: Any, llm_dir: str | Path, adapter_dir: str | Path) -> None:
    """A PeftModel as plain HF base weights in `llm_dir` and a standard peft adapter in `adapter_dir`."""
    base = llm.get_base_model()
    # The injected layers rename weights to `...base_layer.weight`; save the base under its own names.
    clean = {
        unwrap_base_layer(key): value
        for key, value in base.state_dict().items()
        if not is_adapter_parameter(key)
    }
    base.save_pretrained(str(llm_dir), state_dict=clean, safe_serialization=True)
    # The base (resized embeddings and head included) is saved beside the adapter, so peft need not copy them in.
    llm.save_pretrained(str(adapter_dir), safe_serialization=True, save_embedding_layers=False)
