"""`training.distributed` mapped onto TrainingArguments (fsdp / fsdp_config / deepspeed), its checks, and the
gathered (unsharded) model that rank 0 saves after an FSDP run. Sharding itself is accelerate's (FSDP2, ZeRO)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmadapt.config import DistributedConfig, RunConfig
from mmadapt.errors import ConfigError

KEY = "training.distributed"


def check_distributed(config: RunConfig) -> None:
    """Refuse combinations that cannot run, naming the config key, before any model is built."""
    dist = config.training.distributed
    quant = config.peft.quantization if config.peft is not None else "none"
    if dist.strategy in ("fsdp", "deepspeed") and quant != "none" and not torch.cuda.is_available():
        raise ConfigError(f"{KEY}.strategy={dist.strategy} with peft.quantization={quant}: bitsandbytes "
                          "quantized weights need a GPU; use peft.quantization: none on CPU")
    if dist.strategy == "fsdp" and quant != "none":
        raise ConfigError(f"{KEY}.strategy=fsdp with peft.quantization={quant}: FSDP2 cannot shard bitsandbytes "
                          "quantized weights here; use strategy: ddp for QLoRA or peft.quantization: none")
    if dist.strategy == "fsdp" and not torch.accelerator.is_available():
        # accelerate keeps the FSDP plugin only for accelerator device types (state.py leaves MULTI_CPU out):
        # on CPU the run would silently be plain DDP
        raise ConfigError(f"{KEY}.strategy=fsdp needs GPUs/accelerators: accelerate does not shard on CPU; "
                          "use strategy: ddp on CPU")
    if dist.cpu_offload and dist.strategy != "fsdp":
        raise ConfigError(f"{KEY}.cpu_offload applies to strategy: fsdp (DeepSpeed offload is set in its JSON), "
                          f"got strategy: {dist.strategy}")
    if dist.strategy == "deepspeed":
        read_deepspeed_config(dist.deepspeed)


def read_deepspeed_config(path: str | None) -> dict[str, Any]:
    """The DeepSpeed JSON as a dict; a clear error for a missing file, bad JSON or a missing ZeRO stage."""
    file = Path(path or "")
    if not path or not file.is_file():
        raise ConfigError(f"{KEY}.deepspeed: {path!r} is not a file (a DeepSpeed JSON such as "
                          "examples/deepspeed/zero2.json)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{KEY}.deepspeed: {file}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{KEY}.deepspeed: {file} must hold a JSON object, got {type(data).__name__}")
    stage = data.get("zero_optimization", {}).get("stage") if isinstance(data.get("zero_optimization"), dict) else None
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{KEY}.deepspeed: {file}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return data


def wrap_classes(model: Any, dist: DistributedConfig) -> list[str]:
    """FSDP auto-wrap classes: the config's, else the LLM's `_no_split_modules` (its decoder layer)."""
    if dist.wrap:
        return list(dist.wrap)
    llm = getattr(model, "llm", model)
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    classes = list(getattr(base, "_no_split_modules", None) or [])
    if not classes:
        raise ConfigError(f"{KEY}.wrap: the LLM {type(base).__name__} declares no _no_split_modules; name its "
                          "decoder-layer class, e.g. wrap: [LlamaDecoderLayer]")
    present = {type(m).__name__ for m in model.modules()}
    missing = [c for c in classes if c not in present]
    if len(missing) == len(classes):
        raise ConfigError(f"{KEY}.wrap: none of {classes} is a module of this model; set wrap explicitly")
    return [c for c in classes if c in present]


def training_kwargs(config: RunConfig, model: Any) -> dict[str, Any]:
    """TrainingArguments keyword arguments for `training.distributed` (empty for none/ddp: DDP is the
    Trainer's default under a multi-process launch)."""
    dist = config.training.distributed
    if dist.strategy == "fsdp":
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "transformer_layer_cls_to_wrap": wrap_classes(model, dist),
            "reshard_after_forward": dist.sharding == "full_shard",
            "state_dict_type": "SHARDED_STATE_DICT" if dist.state_dict == "sharded" else "FULL_STATE_DICT",
            "cpu_offload": dist.cpu_offload,
            "activation_checkpointing": dist.activation_checkpointing,
        }
        return {"fsdp": True, "fsdp_config": fsdp_config}  # transformers 5: everything in fsdp_config
    if dist.strategy == "deepspeed":
        return {"deepspeed": str(dist.deepspeed)}
    return {}


def is_fsdp(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def full_state_dict(trainer: Any) -> dict[str, torch.Tensor]:
    """The whole model's state, gathered from every rank onto the CPU (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model,
                                options=options)


def unsharded_model(config: RunConfig, state: dict[str, torch.Tensor]) -> Any:
    """A plain (unsharded) copy of the trained model for rank 0's final save: built like the run built it,
    then loaded with the gathered weights (strict: every key must match)."""
    from mmadapt.factory import build_model

    model = build_model(config.model)
    if config.peft is not None:
        from mmadapt.train.peft import apply_peft

        apply_peft(model, config.peft, config.training.train_modules)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"gathered FSDP state does not match the model: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    return model


def require_engine(trainer: Any, config: RunConfig) -> None:
    """Refuse to train when the requested engine did not switch on: accelerate keeps the FSDP plugin only for
    accelerator device types (accelerate/state.py: MULTI_CPU is not among them), so a CPU launch would otherwise
    run plain DDP silently under an `fsdp` config."""
    strategy = config.training.distributed.strategy
    if strategy == "fsdp" and not is_fsdp(trainer):
        raise ConfigError(f"{KEY}.strategy=fsdp: accelerate did not enable FSDP for this launch "
                          f"(distributed type {trainer.accelerator.distributed_type}); FSDP needs GPUs/accelerators "
                          "(accelerate drops the FSDP plugin on CPU); use strategy: ddp on CPU")
    if strategy == "deepspeed" and not getattr(trainer, "is_deepspeed_enabled", False):
        raise ConfigError(f"{KEY}.strategy=deepspeed: accelerate did not enable DeepSpeed for this launch")
