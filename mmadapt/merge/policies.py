"""Per-part merge policies: a different method (or none) for a vision tower, a projector or a language model.

    method: slerp                       # the default for every tensor
    parameters: {t: 0.5}
    parts:
      - {part: connectors, method: linear}    # average the projector
      - {part: encoders, method: keep}        # keep the reference's tower as it is
      - {filter: lm_head, method: task_arithmetic}

`part` names encoders / connectors / llm as the model family knows them (an HF vision-language model's
tower, projector and language model, an mmadapt checkpoint's encoders., connectors.); `filter` is a
substring of tensor names, as in merge parameters. The first entry that matches a tensor decides.
"""

from __future__ import annotations

from typing import Any

from mmadapt import registry
from mmadapt.errors import ConfigError
from mmadapt.hf.families import FAMILIES

KEEP = "keep"  # copy the reference tensor (base_model, else models[0])
PARTS = ("encoders", "connectors", "llm")
# Tensor-name substrings of each part: HF families (saved names may drop or keep the leading "model."),
# and mmadapt's own multimodal.safetensors.
_SUBSTRINGS: dict[str, set[str]] = {part: set() for part in PARTS}
for _family in FAMILIES.values():
    for _part, _prefixes in _family.parts.items():
        _SUBSTRINGS[_part].update(p.removeprefix("model.") for p in _prefixes)
_SUBSTRINGS["encoders"].add("encoders.")
_SUBSTRINGS["connectors"].add("connectors.")


def part_of(name: str) -> str:
    """encoders | connectors | llm for a tensor name (the longest matching part substring wins; default llm)."""
    best, best_len = "llm", -1
    for part, substrings in _SUBSTRINGS.items():
        for sub in substrings:
            if sub in name and len(sub) > best_len:
                best, best_len = part, len(sub)
    return best


def check_parts(parts: list[dict[str, Any]], num_models: int, has_base: bool) -> dict[int, Any]:
    """Validate `parts:` entries; returns {entry index: MergeMethod or KEEP}."""
    methods: dict[int, Any] = {}
    for i, entry in enumerate(parts):
        where = f"parts[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"part", "filter", "method"} or "method" not in entry \
                or ("part" in entry) == ("filter" in entry):
            raise ConfigError(f"{where}: expected {{part: encoders|connectors|llm, method: NAME}} or "
                              f"{{filter: <substring of tensor names>, method: NAME}}, got {entry!r}")
        if "part" in entry and entry["part"] not in PARTS:
            raise ConfigError(f"{where}.part: {entry['part']!r}; valid: {', '.join(PARTS)}")
        if "filter" in entry and (not isinstance(entry["filter"], str) or not entry["filter"]):
            raise ConfigError(f"{where}.filter: expected a non-empty string, got {entry['filter']!r}")
        if entry["method"] == KEEP:
            methods[i] = KEEP
            continue
        if not isinstance(entry["method"], str):
            raise ConfigError(f"{where}.method: expected a method name or {KEEP!r}, got {entry['method']!r}")
        method = registry.resolve("merge_method", entry["method"], where=f"{where}.method")
        if method.num_models is not None and num_models != method.num_models:
            raise ConfigError(f"{where}.method: {method.name} merges exactly {method.num_models} models, got {num_models}")
        if method.needs_base and not has_base:
            raise ConfigError(f"{where}.method: {method.name} needs base_model")
        methods[i] = method
    return methods


def method_for(name: str, parts: list[dict[str, Any]], methods: dict[int, Any], default: Any) -> Any:
    """The method (or KEEP) that merges tensor `name`."""
    for i, entry in enumerate(parts):
        if ("part" in entry and part_of(name) == entry["part"]) or ("filter" in entry and entry["filter"] in name):
            return methods[i]
    return default
