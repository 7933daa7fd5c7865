"""Load a run config and check its registry-backed parts (encoders, connectors, objective) before any work.

Apart from mmadapt.config so that the configs import nothing of the rest (the registry builds from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmadapt import registry
from mmadapt.config import DataConfig, RunConfig, from_dict, load, stage_configs
from mmadapt.errors import ConfigError


def validate_run(config: RunConfig) -> RunConfig:
    """Check the registry-backed parts (encoders, connectors, objective) of every stage."""
    for stage_name, cfg in stage_configs(config):
        prefix = f"stages.{stage_name}." if stage_name else ""
        for modality, spec in cfg.model.encoders.items():
            registry.validate("encoder", spec, f"{prefix}model.encoders.{modality}")
        for modality, spec in cfg.model.connectors.items():
            registry.validate("connector", spec, f"{prefix}model.connectors.{modality}")
        registry.validate("objective", cfg.objective, f"{prefix}objective")
        _validate_data_sections(cfg.data, f"{prefix}data")
    return config


def _validate_data_sections(data: DataConfig, where: str) -> None:
    """data.generate and data.retrieval are free-form dicts read by their own loaders: check them here,
    at load, so a typo under them fails before a model is built instead of mid-run."""
    if data.generate is not None:
        from mmadapt.data.loading import generate_spec

        generate_spec(data.generate, f"{where}.generate")
    if data.retrieval is not None:
        from mmadapt.rag.augment import PromptConfig, RetrievalDataConfig

        retrieval = from_dict(RetrievalDataConfig, dict(data.retrieval), path=f"{where}.retrieval")
        from_dict(PromptConfig, dict(retrieval.prompt), path=f"{where}.retrieval.prompt")


def load_run(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Load, override, interpolate and fully validate a run config."""
    config = load(RunConfig, source, overrides)
    try:
        return validate_run(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if not isinstance(source, dict) else str(e)) from None
