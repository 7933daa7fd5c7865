"""Adapters through `peft`: LoRA / DoRA / rsLoRA on the LLM (and optionally the encoders), QLoRA on CUDA.

The LLM becomes a `peft.PeftModel`, saved in peft's own layout (DIR/llm = clean base weights,
DIR/llm_adapter = adapter_config.json + adapter_model.safetensors), so plain
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR/llm), DIR/llm_adapter)` loads it.
Encoders get adapters injected in place (`peft.inject_adapter_in_model`); connectors are untouched
and keep training fully. `mmadapt.export` folds the adapters into a full model (`mmadapt export --merge-adapters`).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import torch
from torch import nn

from mmadapt.adapters import is_adapter_parameter, lora_config
from mmadapt.config import PeftConfig
from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)


def _linear_names(module: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


def _check_targets(cfg: PeftConfig, module: nn.Module, where: str) -> None:
    """peft's own error for unmatched targets names neither the config key nor the valid names."""
    targets = cfg.target_modules
    if isinstance(targets, str) and targets.lower() == "all-linear":
        return
    from peft.tuners.tuners_utils import check_target_module_exists

    config = lora_config(cfg)
    if not any(check_target_module_exists(config, name) for name, _ in module.named_modules()):
        raise ConfigError(
            f"peft.target_modules: {targets!r} matches no module of the {where}; its linear layers are "
            f"named {', '.join(_linear_names(module)[:20])} (or use all-linear)"
        )


def _check_quantization(cfg: PeftConfig) -> None:
    if cfg.quantization == "none":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"peft.quantization: {cfg.quantization} (QLoRA) needs a CUDA GPU for the bitsandbytes kernels and this "
            "machine has none; set peft.quantization: none to train plain LoRA here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ConfigError("peft.quantization needs bitsandbytes: pip install 'mmadapt[qlora]'") from e


def _quantize_llm(model: Any, cfg: PeftConfig) -> None:
    """Reload the LLM with 4-/8-bit bitsandbytes weights (QLoRA), keeping the in-memory embeddings.

    bitsandbytes quantises at load time, so the LLM is re-read from where it came from; the
    embedding rows (which may include added placeholder tokens) are copied over from memory.
    """
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = getattr(model.llm, "name_or_path", "") or getattr(model.llm.config, "_name_or_path", "")
    if not source:
        raise ConfigError("peft.quantization: the LLM was built from llm.config (random weights); QLoRA needs "
                          "pretrained weights from llm.name_or_path")
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quantization = BitsAndBytesConfig(
        load_in_4bit=cfg.quantization == "4bit",
        load_in_8bit=cfg.quantization == "8bit",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    embeddings = model.llm.get_input_embeddings().weight.detach().to("cpu", copy=True)  # [V, H]
    model.llm = None
    gc.collect()
    llm = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=quantization, dtype=compute, device_map={"": torch.cuda.current_device()}
    )
    if llm.get_input_embeddings().num_embeddings != embeddings.shape[0]:
        llm.resize_token_embeddings(embeddings.shape[0], mean_resizing=False)
        llm.get_input_embeddings().weight.data.copy_(embeddings)
    model.llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    logger.info("QLoRA: reloaded %s with %s bitsandbytes weights", source, cfg.quantization)


def apply_peft(model: Any, cfg: PeftConfig, train_modules: list[str] | None = None) -> None:
    """Wrap `model.llm` (and, with apply_to: [encoders], every encoder) with fresh LoRA/DoRA adapters.

    An LLM that already carries adapters (a LoRA checkpoint) has them merged in first, so a new
    stage trains a new adapter on top of the previous stage's result. Connectors are left as they are.
    A model with its own `apply_peft` (an HF vision-language model) places its adapters itself.
    """
    from peft import PeftModel, get_peft_model, inject_adapter_in_model

    if hasattr(model, "apply_peft"):
        model.apply_peft(cfg, list(train_modules or []))
        return

    unknown = [part for part in cfg.apply_to if part not in ("llm", "encoders")]
    if unknown or not cfg.apply_to:
        raise ConfigError(f"peft.apply_to: {cfg.apply_to!r}; valid entries: llm, encoders")
    _check_quantization(cfg)
    if isinstance(model.llm, PeftModel):
        logger.info("the LLM already has adapters: merging them before adding new ones")
        model.llm = model.llm.merge_and_unload()
    if cfg.quantization != "none":
        _quantize_llm(model, cfg)
    if "llm" in cfg.apply_to:
        _check_targets(cfg, model.llm, "LLM")
        model.llm = get_peft_model(model.llm, lora_config(cfg))
    if "encoders" in cfg.apply_to:
        if not len(model.encoders):
            raise ConfigError("peft.apply_to includes encoders but the model has none")
        for modality, encoder in model.encoders.items():
            _check_targets(cfg, encoder, f"{modality} encoder")
            inject_adapter_in_model(lora_config(cfg), encoder)
    adapter = sum(p.numel() for n, p in model.named_parameters() if is_adapter_parameter(n))
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "peft: %s r=%d alpha=%d%s on %s (targets %s): %s adapter parameters (%.2f%% of %s)",
        cfg.method, cfg.r, cfg.alpha, " rsLoRA" if cfg.rslora else "", "+".join(cfg.apply_to),
        cfg.target_modules, f"{adapter:,}", 100 * adapter / max(total, 1), f"{total:,}",
    )
