"""Build or load the model a config or a checkpoint directory describes: composed (MultimodalLM) or HF (HFVisionLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmadapt.adapters import merge_adapters
from mmadapt.config import ModelConfig, VLMConfig
from mmadapt.errors import ConfigError, MMAdaptError
from mmadapt.hf.families import FAMILIES
from mmadapt.hf.model import HFVisionLM
from mmadapt.model import MultimodalLM

MODEL_CONFIG_FILE = "mmadapt_model.yaml"


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


def checkpoint_kind(directory: str | Path) -> str:
    """"vlm" or "llm": which model class saved `directory` (its mmadapt_model.yaml says)."""
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{directory}: not an mmadapt checkpoint (no {MODEL_CONFIG_FILE})")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of model config keys")
    return "vlm" if raw.get("vlm") else "llm"


def load_model(directory: str | Path, is_trainable: bool = False, trust_remote_code: bool = False) -> Any:
    """Load any checkpoint mmadapt wrote (a composed model, or an HF VLM in its own format), or a plain
    Hugging Face vision-language directory of a supported family (an export, or a checkpoint users have)."""
    if not (Path(directory) / MODEL_CONFIG_FILE).is_file() and is_hf_vlm_dir(Path(directory)):
        return HFVisionLM.from_config(ModelConfig(vlm=VLMConfig(name_or_path=str(directory))), is_trainable=is_trainable)
    if checkpoint_kind(directory) == "vlm":
        return HFVisionLM.from_pretrained(directory, is_trainable=is_trainable, trust_remote_code=trust_remote_code)

    # trust_remote_code: the caller's (a CLI flag), never the checkpoint's own yaml
    return MultimodalLM.from_pretrained(directory, is_trainable=is_trainable, trust_remote_code=trust_remote_code)


def is_hf_vlm_dir(directory: Path) -> bool:
    import json

    try:
        return json.loads((directory / "config.json").read_text()).get("model_type") in FAMILIES
    except (OSError, ValueError):
        return False
