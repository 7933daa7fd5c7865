"""Typed run configs: dataclasses loaded from YAML, validated by pydantic v2, `--set a.b=v` overrides, dump.

`from_dict` is the one validator for every config in mmadapt (runs, encoder/connector/objective
kwargs, merge configs, edit hyper-parameters): pydantic checks the mapping against a strict model derived from
the dataclass (`schema_model`), and an unknown key or a wrong type raises ConfigError naming the key path, the
valid keys and a close match.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

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


def unknown_key_error(key: str, valid: list[str], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {_join(path, key)!r}{hint}; valid keys: {', '.join(valid)}")


# Every config dataclass is validated by pydantic v2 under these rules: unknown keys refused, no coercion (an int
# may stand for a float; "false" is not a bool, 1.0 not an int, 1 not a string), no NaN or infinity.
PYDANTIC_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)

# pydantic error type -> what a config author is told (after the key path; then what was given)
_EXPECTED = {"float_type": "expected a number", "int_type": "expected an integer", "bool_type": "expected true or false",
             "string_type": "expected a string", "list_type": "expected a list", "tuple_type": "expected a list",
             "dict_type": "expected a mapping", "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
             "finite_number": "expected a finite number"}


def _optional_dataclass(tp: Any) -> Any:
    """The dataclass in `tp` (itself, or the member of an Optional / union), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a) and isinstance(a, type)), None)
    return None


def _schema_type(tp: Any) -> Any:
    """`tp` with every config dataclass in it replaced by its pydantic schema model."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return schema_model(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not args or origin is typing.Literal or origin is typing.Annotated:
        return tp
    mapped = tuple(_schema_type(a) for a in args)
    if mapped == args:
        return tp
    if origin in (Union, types.UnionType):
        return Union[mapped]  # type: ignore[return-value]
    return origin[mapped] if origin in (list, dict, tuple) else tp


@functools.lru_cache(maxsize=None)
def schema_model(cls: type) -> type[BaseModel]:
    """The pydantic model that validates config dataclass `cls`: the same field names, types and required keys,
    under PYDANTIC_CONFIG. The dataclass stays what code uses (its __post_init__ checks the values together)."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        # an absent key keeps the dataclass's own default (only the keys given are validated and passed on)
        fields[f.name] = (_schema_type(hints[f.name]), ... if required else None)
    return create_model(f"{cls.__name__}Schema", __config__=PYDANTIC_CONFIG, **fields)


def _build(cls: type[T], values: dict[str, Any], path: str) -> T:
    """The dataclass from validated values (nested mappings become their dataclasses; __post_init__ runs)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        inner = _optional_dataclass(tp)
        if inner is not None and isinstance(value, dict):
            value = _build(inner, value, _join(path, name))
        elif isinstance(value, (list, dict)) and typing.get_args(tp):
            item = _optional_dataclass(typing.get_args(tp)[-1])
            if item is not None and isinstance(value, list):
                value = [_build(item, v, _join(_join(path, name), i)) for i, v in enumerate(value)]
            elif item is not None and isinstance(value, dict):
                value = {k: _build(item, v, _join(_join(path, name), k)) for k, v in value.items()}
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def _config_error(cls: type, error: ValidationError, path: str) -> ConfigError:
    """pydantic's first error as mmadapt's message: the key path and what is valid (a close match for a typo)."""
    e = error.errors(include_url=False)[0]
    loc = tuple(k for k in e["loc"] if isinstance(k, int) or not _is_union_tag(k))
    where = path
    for key in loc:
        where = _join(where, key)
    kind, value = e["type"], e.get("input")
    if kind == "extra_forbidden":
        return unknown_key_error(str(loc[-1]), _keys_at(cls, loc[:-1]), _parent(where))
    if kind == "missing":
        return ConfigError(f"missing required key {where!r}")
    if kind == "literal_error":
        return ConfigError(f"{where}: {value!r} is not valid; valid: {e['ctx']['expected'].replace(' or ', ', ')}")
    if kind in _EXPECTED:
        return ConfigError(f"{where or cls.__name__}: {_EXPECTED[kind]}, got {type(value).__name__} {value!r}")
    return ConfigError(f"{where or cls.__name__}: {e['msg']} (got {value!r})")


def _is_union_tag(key: str) -> bool:
    """pydantic names the union member it tried ("int", "list[str]", "ModelConfigSchema") in an error location."""
    return "[" in key or key.endswith("Schema") or key in ("int", "float", "str", "bool", "dict", "list", "none")


def _keys_at(cls: type, loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at `loc` under dataclass `cls`."""
    tp: Any = cls
    for key in loc:
        inner = _optional_dataclass(tp)
        if inner is not None and isinstance(key, str):
            tp = typing.get_type_hints(inner).get(key, Any)
        elif typing.get_args(tp):
            tp = typing.get_args(tp)[-1]
    inner = _optional_dataclass(tp)
    return [f.name for f in dataclasses.fields(inner) if f.init] if inner is not None else []


def _parent(where: str) -> str:
    """`a.b.c` -> `a.b`, `a[2]` -> `a`: the path of the mapping that holds the last key."""
    cut = max(where.rfind("."), where.rfind("["))
    return where[:cut] if cut > 0 else ""


def _refuse_huge_ints(data: Any, path: str) -> None:
    """ints beyond MAX_INT lose exactness as floats and overflow torch's int64 downstream."""
    if isinstance(data, dict):
        for key, value in data.items():
            _refuse_huge_ints(value, _join(path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _refuse_huge_ints(value, _join(path, i))
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_INT:
        raise ConfigError(f"{path}: {data} is out of range; valid: at most {MAX_INT} in magnitude")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build config dataclass `cls` from a mapping, validated by pydantic (`schema_model(cls)`): an unknown key, a
    wrong type or a missing required key is a ConfigError naming the key path and what is valid."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    _refuse_huge_ints(data, path)
    try:
        validated = schema_model(cls).model_validate(data)
    except ValidationError as e:
        raise _config_error(cls, e, path) from None
    return _build(cls, validated.model_dump(exclude_unset=True), path)


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
        value = yaml_load(raw) if raw.strip() else ""
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


class _ConfigLoader(yaml.SafeLoader):
    """YAML with 1.2's floats: `1e-4` (no dot) is the number users mean, not the string YAML 1.1 makes of it."""


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse config YAML (files, `--set` values)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: no arbitrary objects


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
        data = yaml_load(text)
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
           "DistributedConfig", "stage_configs", "deep_merge", "read_yaml", "yaml_load", "unknown_key_error"]


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
