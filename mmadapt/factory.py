"""Build or load the model a config or a checkpoint directory describes: composed (MultimodalLM) or HF (HFVisionLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmadapt.adapters import merge_adapters
from mmadapt.config import ModelConfig, VLMConfig
from mmadapt.errors import ConfigError, MMAdaptError, NotAModelError
from mmadapt.hf.families import FAMILIES
from mmadapt.hf.model import HFVisionLM
from mmadapt.model import MultimodalLM
from mmadapt.layout import MODEL_CONFIG_FILE
from mmadapt.peft_names import ADAPTER_CONFIG


def build_model(config: ModelConfig) -> Any:
    """A fresh model for a run: `model.vlm` -> HFVisionLM, `model.llm` -> MultimodalLM, `model.init_from` alone -> the
    finished run's model as it was saved (adapters trainable, or merged with `model.merge_adapters`)."""
    if config.llm is None and config.vlm is None:
        try:
            model = load_model(config.init_from, is_trainable=True)
        except MMAdaptError as e:
            raise ConfigError(f"model.init_from: {e}") from e
        if config.merge_adapters:
            merge_adapters(model)
        return model
    if config.vlm is not None:
        return HFVisionLM.from_config(config)

    return MultimodalLM.from_config(config)


def checkpoint_format(directory: str | Path, what: str = "") -> str:
    """Which kind of model directory `directory` is, from its files (the one place that decides it):

    "mmadapt" (a composed MultimodalLM: mmadapt_model.yaml), "mmadapt-vlm" (an HF vision-language model mmadapt
    saved in its family's layout: mmadapt_model.yaml with `vlm`), "adapter" (a peft LoRA adapter), "hf-vlm" (a
    plain Hugging Face model of a supported VLM family) or "hf" (any other Hugging Face model: config.json).
    Anything else is a NotAModelError naming the directory (`what`: how messages name it, default its path)."""
    directory = Path(directory)
    label = what or str(directory)
    if not directory.is_dir():
        raise NotAModelError(f"{label}: not a model directory (no such directory, or not a directory)")
    if (directory / MODEL_CONFIG_FILE).is_file():
        return "mmadapt-vlm" if _saved_vlm(directory / MODEL_CONFIG_FILE) else "mmadapt"
    if (directory / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (directory / "config.json").is_file():
        return "hf-vlm" if is_hf_vlm_dir(directory) else "hf"
    raise NotAModelError(f"{label}: not a model directory: not an mmadapt checkpoint (no {MODEL_CONFIG_FILE}), a "
                         f"Hugging Face model (no config.json) or a peft LoRA adapter (no {ADAPTER_CONFIG})")


def _saved_vlm(path: Path) -> bool:
    """Whether an mmadapt_model.yaml describes an HF VLM (`vlm:` set) rather than a composed model."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of model config keys")
    return bool(raw.get("vlm"))


def load_model(directory: str | Path, is_trainable: bool = False, trust_remote_code: bool = False) -> Any:
    """Load any checkpoint mmadapt wrote (a composed model, or an HF VLM in its own format), or a plain
    Hugging Face vision-language directory of a supported family (an export, or a checkpoint users have)."""
    kind = checkpoint_format(directory)
    if kind == "hf-vlm":
        return HFVisionLM.from_config(ModelConfig(vlm=VLMConfig(name_or_path=str(directory))), is_trainable=is_trainable)
    if kind not in ("mmadapt", "mmadapt-vlm"):
        raise NotAModelError(f"{directory}: not an mmadapt checkpoint (no {MODEL_CONFIG_FILE}; it is a{'n' if kind == 'adapter' else ''} "
                             f"{kind} directory)")
    if kind == "mmadapt-vlm":
        return HFVisionLM.from_pretrained(directory, is_trainable=is_trainable, trust_remote_code=trust_remote_code)

    # trust_remote_code: the caller's (a CLI flag), never the checkpoint's own yaml
    return MultimodalLM.from_pretrained(directory, is_trainable=is_trainable, trust_remote_code=trust_remote_code)


def is_hf_vlm_dir(directory: str | Path) -> bool:
    """Whether `directory` holds a Hugging Face model of a supported vision-language family (its config.json says)."""
    import json

    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in FAMILIES
