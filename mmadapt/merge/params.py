"""Merge parameters that vary by tensor name: scalars, per-layer gradients and tensor-name filters.

A parameter value in a merge config is one of
- a scalar: `0.5` (every tensor);
- a gradient: `[0.0, 0.5, 1.0]`, spread evenly over the layers of a numbered stack
  (`model.layers.<i>.`: layer i of n sits at i / (n - 1), a single layer at 1) and interpolated
  linearly in between; tensors outside any stack (embeddings, final norm, lm_head) take its first
  value;
- a filter list: `[{filter: self_attn, value: 0.3}, {filter: mlp, value: [0.2, 0.8]}, {value: 0.5}]`,
  where the first entry whose `filter` is a substring of the tensor name decides and an entry
  without `filter` (or with `filter: "*"`) is the fallback.

These are mergekit 0.1.5's rules (`config.evaluate_setting`, `plan.py`), so a mergekit YAML's
gradients resolve to the same value for every tensor.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

from mmadapt.errors import ConfigError

_LAYER = re.compile(r"^(.*?)\.(\d+)\.")  # "model.layers.3.mlp.up_proj.weight" -> ("model.layers", "3")



@dataclass(frozen=True)
class Param:
    """One merge parameter, declared once: the check, default and mergekit name below are derived from it."""

    default: float | None = None  # None: no numeric default (a boolean the method decides)
    boolean: bool = False
    bounds: tuple[float, float] | None = None
    mergekit: str | None = None  # mergekit's name for it where it differs


PARAMS: dict[str, Param] = {
    "weight": Param(1.0),
    "density": Param(1.0, bounds=(0.0, 1.0)),
    "scaling": Param(1.0, mergekit="lambda"),
    "normalize": Param(boolean=True),
    "rescale": Param(boolean=True),
    "t": Param(0.5, bounds=(0.0, 1.0)),
}
BOOL_PARAMS = tuple(name for name, p in PARAMS.items() if p.boolean)
RANGES = {name: p.bounds for name, p in PARAMS.items() if p.bounds is not None}
DEFAULTS = {name: p.default for name, p in PARAMS.items() if p.default is not None}
MERGEKIT_NAMES = {p.mergekit or name: name for name, p in PARAMS.items()}  # mergekit key -> ours


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value(name: str, value: Any, where: str) -> None:
    """Reject a malformed parameter value, naming the config key and what is valid."""
    if name in BOOL_PARAMS:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return
    lo, hi = RANGES.get(name, (None, None))

    def number(v: Any, at: str) -> None:
        if not _is_number(v):
            raise ConfigError(f"{at}: expected a number, got {v!r} (a value is a number, a list of numbers "
                              f"per layer, or a list of {{filter, value}} entries)")
        if lo is not None and not lo <= v <= hi:
            raise ConfigError(f"{at}: {name} must lie in [{lo}, {hi}], got {v}")

    def scalar_or_gradient(v: Any, at: str) -> None:
        if isinstance(v, list):
            if not v:
                raise ConfigError(f"{at}: an empty gradient; give at least one number")
            for i, item in enumerate(v):
                number(item, f"{at}[{i}]")
        else:
            number(v, at)

    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, entry in enumerate(value):
            unknown = set(entry) - {"filter", "value"}
            if unknown or "value" not in entry:
                raise ConfigError(f"{where}[{i}]: a filter entry is {{filter: <substring of tensor names>, value: ...}}"
                                  f" (filter optional for the fallback), got {entry!r}")
            if "filter" in entry and (not isinstance(entry["filter"], str) or not entry["filter"]):
                raise ConfigError(f"{where}[{i}].filter: expected a non-empty string, got {entry['filter']!r}")
            scalar_or_gradient(entry["value"], f"{where}[{i}].value")
        return
    scalar_or_gradient(value, where)


def layer_stacks(names: Iterable[str]) -> dict[str, int]:
    """{stack prefix: number of layers} from tensor names (e.g. {"model.layers": 32})."""
    stacks: dict[str, int] = {}
    for name in names:
        match = _LAYER.match(name)
        if match:
            prefix, index = match.group(1), int(match.group(2))
            stacks[prefix] = max(stacks.get(prefix, 0), index + 1)
    return stacks


def layer_position(name: str, stacks: dict[str, int]) -> float | None:
    """Where `name` sits in its layer stack, in [0, 1]; None outside any stack."""
    match = _LAYER.match(name)
    if not match or match.group(1) not in stacks:
        return None
    count = stacks[match.group(1)]
    return int(match.group(2)) / (count - 1) if count > 1 else 1.0  # mergekit: a one-layer slice has t = 1


def _gradient(values: list[float], position: float | None) -> float:
    if len(values) == 1:
        return float(values[0])
    if position is None:  # mergekit plans embeddings and the final norm/lm_head with t = 0
        return float(values[0])
    x = position * (len(values) - 1)
    lo = min(int(x), len(values) - 2)
    frac = x - lo
    return float(values[lo] * (1 - frac) + values[lo + 1] * frac)


def resolve(value: Any, name: str, stacks: dict[str, int], default: Any = None) -> Any:
    """The value of one (checked) parameter for tensor `name`; `default` when no filter matches."""
    if isinstance(value, bool):
        return value
    if _is_number(value):
        return float(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for entry in value:
            if "filter" not in entry or entry["filter"] == "*" or entry["filter"] in name:
                return resolve(entry["value"], name, stacks, default)
        return default
    if isinstance(value, list):
        return _gradient([float(v) for v in value], layer_position(name, stacks))
    return default


class ParamResolver:
    """Turns the config's per-model and global parameter values into `MergeParams` for each tensor name."""

    DEFAULTS = DEFAULTS

    def __init__(self, model_params: list[dict[str, Any]], global_params: dict[str, Any], names: Iterable[str],
                 seed: int = 0) -> None:
        self.model_params = model_params
        self.global_params = global_params
        self.stacks = layer_stacks(names)
        self.seed = seed

    def _model_value(self, i: int, key: str, name: str) -> float:
        # a model's own value, else the global default (parameters.weight), else the built-in default
        fallback = resolve(self.global_params[key], name, self.stacks, None) if key in self.global_params else None
        fallback = self.DEFAULTS[key] if fallback is None else fallback
        if key in self.model_params[i]:
            return resolve(self.model_params[i][key], name, self.stacks, fallback)
        return fallback

    def __call__(self, name: str):
        from mmadapt.merge.methods import MergeParams

        n = len(self.model_params)
        g = self.global_params

        def global_value(key: str, default: Any) -> Any:
            return resolve(g[key], name, self.stacks, default) if key in g else default

        return MergeParams(
            weights=[self._model_value(i, "weight", name) for i in range(n)],
            densities=[self._model_value(i, "density", name) for i in range(n)],
            scaling=global_value("scaling", 1.0),
            normalize=global_value("normalize", None),
            rescale=global_value("rescale", None),
            t=global_value("t", 0.5),
            # a seed per tensor name, independent of the order tensors are visited (streamed == in memory)
            seed=(self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**62),
        )
