"""Load a run config and check its registry-backed parts (encoders, connectors, objective) before any work.

Apart from mmadapt.config so that the configs import nothing of the rest (the registry builds from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmadapt import registry
from mmadapt.config import RunConfig, load, stage_configs
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
    return config


def load_run(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Load, override, interpolate and fully validate a run config."""
    config = load(RunConfig, source, overrides)
    try:
        return validate_run(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if not isinstance(source, dict) else str(e)) from None
