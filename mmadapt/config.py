"""Typed run configs: dataclasses loaded from YAML, strict validation, `--set a.b=v` overrides, dump.

`from_dict` is the one validator for every config in mmadapt (runs, encoder/connector/objective
kwargs, merge configs, edit hyper-parameters): an unknown key or a wrong type raises ConfigError
naming the key path, the valid keys and a close match.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from mmadapt.errors import ConfigError
# the run schema lives in mmadapt.schema; re-exported for `from mmadapt.config import RunConfig, ...`
from mmadapt.schema import (DataConfig, DistributedConfig, LLMConfig, ModelConfig, PeftConfig, RunConfig, TrainingConfig,
                            VLMConfig)

T = TypeVar("T")

MAX_INT = 2**53  # ints above this lose exactness as floats and overflow torch's int64 arithmetic downstream


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is looser (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message (e.g. a Literal's valid values)
            return _coerce(value, options[0], path)
        for arg in options:
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} is not {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not valid; valid: {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, val_tp, _join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):  # `.nan` / `.inf` pass every `> 0` check and crash in torch later
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        if abs(value) > MAX_INT:  # beyond int64 torch overflows; no count, size or step is this large
            raise ConfigError(f"{path}: {value} is out of range; valid: at most {MAX_INT} in magnitude")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def unknown_key_error(key: str, valid: list[str], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {_join(path, key)!r}{hint}; valid keys: {', '.join(valid)}")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys, wrong types and missing required keys."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), path)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {_join(path, name)!r}")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a copy of raw config data (validated afterwards by from_dict).

    The caller's dict and everything nested in it stay untouched: a quickstart or test that reuses one
    base dict for several runs must not see the first run's overrides in the second.
    """
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, key in enumerate(keys):
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):  # `models.0.model=...` indexes a list
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"--set {text!r}: {where}: index out of range (the list has {len(node)} items)")
                key = int(key)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:depth])} is not a mapping or list")
            if depth == len(keys) - 1:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return data


_REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def interpolate(data: Any, root: dict[str, Any] | None = None, path: str = "",
                _active: tuple[Any, ...] = ()) -> Any:
    """Resolve `${key.path}` references to other string/number values of the same config.

    `_active` holds the containers and references being resolved: a YAML anchor that contains itself
    or a reference chain that returns to its start is a ConfigError naming the key, not a RecursionError.
    """
    root = data if root is None else root
    if isinstance(data, (dict, list)):
        if any(data is node for node in _active):
            raise ConfigError(f"{path or 'config'}: a YAML anchor refers to itself (a recursive structure); "
                              f"an alias must point at a value defined before and outside it")
        inner = (*_active, data)
        if isinstance(data, dict):
            return {k: interpolate(v, root, _join(path, k), inner) for k, v in data.items()}
        return [interpolate(v, root, _join(path, i), inner) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        def lookup(match: re.Match) -> str:
            ref = match.group(1)
            if ref in _active or ref == path:
                raise ConfigError(f"{path}: reference ${{{ref}}} refers back to itself; "
                                  f"a reference must name a key with a literal value")
            node: Any = root
            for key in ref.split("."):
                if not isinstance(node, dict) or key not in node:
                    raise ConfigError(f"{path}: reference ${{{ref}}} names no config key")
                node = node[key]
            if isinstance(node, (dict, list)):
                raise ConfigError(f"{path}: reference ${{{ref}}} is not a scalar")
            return str(interpolate(node, root, ref, (*_active, path, ref)))

        return _REF.sub(lookup, data)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    from mmadapt.io import read_utf8

    path = Path(path)
    text = read_utf8(path, "a config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    except RecursionError:  # deeply nested flow collections exhaust the parser's stack
        raise ConfigError(f"{path}: the YAML nests too deeply; valid: a config nested at most a few hundred levels") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data


def load(cls: type[T], source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> T:
    """Load a config dataclass from a YAML file (or a dict), apply `--set` overrides, interpolate, validate."""
    data = read_yaml(source) if not isinstance(source, dict) else source
    data = apply_overrides(data, list(overrides or []))
    data = interpolate(data)
    where = f"{source}" if not isinstance(source, dict) else ""
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def dump(obj: Any, path: str | Path) -> None:
    from mmadapt.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


__all__ = ["ConfigError", "from_dict", "to_dict", "load", "dump", "apply_overrides", "interpolate", "dataclass", "field",
           "DataConfig", "LLMConfig", "ModelConfig", "PeftConfig", "RunConfig", "TrainingConfig", "VLMConfig",
           "DistributedConfig", "stage_configs", "deep_merge", "read_yaml", "unknown_key_error"]


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def stage_configs(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """Expand `stages:` into one full RunConfig per stage (output in OUTPUT_DIR/STAGE_NAME).

    Without stages, the run is its own single stage writing to OUTPUT_DIR.
    """
    if not config.stages:
        return [("", config)]
    base = to_dict(config)
    base.pop("stages")
    result, seen = [], set()
    for i, stage in enumerate(config.stages):
        stage = dict(stage)
        name = stage.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"stages[{i}]: every stage needs a name")
        if not _STAGE_NAME.fullmatch(name):  # it names a folder inside output_dir: never a path out of it
            raise ConfigError(f"stages[{i}].name: {name!r} is not valid; a stage name is one folder name inside "
                              "output_dir: letters, digits, '_', '-', '.', starting with a letter or digit")
        if name in seen:
            raise ConfigError(f"stages[{i}]: duplicate stage name {name!r}")
        seen.add(name)
        if "stages" in stage or "output_dir" in stage:
            raise ConfigError(f"stages[{i}] ({name}): a stage may not set 'stages' or 'output_dir'")
        merged = deep_merge(base, stage)
        merged["output_dir"] = str(Path(config.output_dir) / name)
        result.append((name, from_dict(RunConfig, merged, path=f"stages[{i}]")))
    return result
