"""The edit YAML of `mmadapt edit apply CONFIG`: which registered edit method, its hyper-parameters, which requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.errors import ConfigError

EDIT_CONFIG_KEYS = ("method", "hparams", "requests")


@dataclass
class EditConfig:
    method: str = "rome"
    hparams: dict[str, Any] = field(default_factory=dict)
    requests: Path | None = None  # resolved against the YAML's folder


def read_edit_config(path: str | Path) -> EditConfig:
    """Read and check an edit YAML: unknown keys, an unregistered method or hyper-parameters the method does not
    declare are errors naming the file and the key, at load rather than mid-edit."""
    from mmadapt import registry
    from mmadapt.config import from_dict, read_yaml

    path = Path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - set(EDIT_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(EDIT_CONFIG_KEYS)}")
    hparams = data.get("hparams") or {}
    if not isinstance(hparams, dict):
        raise ConfigError(f"{path}: hparams: expected a mapping of the method's hyper-parameters, got {hparams!r}")
    method = str(data.get("method") or "rome")
    entry = registry.resolve("edit_method", method, where=f"{path}: method")
    try:
        from_dict(entry.hparams_class, hparams)
    except ConfigError as e:
        raise ConfigError(f"{path}: hparams: {e}") from None
    requests = path.parent / str(data["requests"]) if data.get("requests") else None
    return EditConfig(method=method, hparams=dict(hparams), requests=requests)
