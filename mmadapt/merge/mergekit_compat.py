"""Read a mergekit YAML (`merge_method:`, `models:` or `slices:`) as an mmadapt MergeConfig, unchanged.

    merge_method: ties                 # linear | task_arithmetic | ties | dare_linear | dare_ties | slerp
    base_model: ./base
    models:
      - model: ./sft-a
        parameters: {weight: 0.5, density: [0.2, 0.8]}
      - model: ./base                  # listing the base among the models is fine (its parameters are unused)
    parameters: {normalize: true, lambda: 1.0}
    dtype: float32                     # out_dtype wins for the output dtype when both are given
    tokenizer_source: base

Keys map one to one (`lambda` -> `scaling`, `merge_method` -> `method`); parameter values (scalars,
gradients, filter lists) keep mergekit's meaning (params.py). `slices:` is read where it selects whole
layers: one output slice whose sources each cover every layer. Anything mmadapt cannot reproduce
(other methods, layer stacking, `modules`, `tokenizer:` surgery, `chat_template`, `model+lora`
references, DELLA/breadcrumbs parameters) is refused by name, never silently dropped.

Where mmadapt and mergekit differ by design: mmadapt computes every merge in float32 and casts to the
output dtype; mergekit computes task-vector merges in `dtype` itself, so with `dtype: bfloat16` the two
can differ in the last bit. DARE's random masks come from different generators (equal in law only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmadapt.config import read_yaml
from mmadapt.errors import ConfigError
from mmadapt.merge.params import MERGEKIT_NAMES

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp")
PARAMETERS = MERGEKIT_NAMES  # derived from the one declaration in mmadapt.merge.params
IGNORED_PARAMETERS = ("int8_mask",)  # mergekit's mask storage type: changes memory, never the result
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source"}
REFUSED_KEYS = {
    "modules": "per-module merges (modules:) are mergekit-only; merge the whole model with models:",
    "tokenizer": "tokenizer surgery (tokenizer:) is mergekit-only; mmadapt merges models that share one tokenizer",
    "chat_template": "chat_template: set it on the merged model's tokenizer afterwards",
}


def is_mergekit_config(data: Any) -> bool:
    """A mergekit config names `merge_method`; an mmadapt one names `method`."""
    return isinstance(data, dict) and "merge_method" in data


def _model_ref(value: Any, where: str) -> str:
    if isinstance(value, dict) and set(value) <= {"model", "lora"} and isinstance(value.get("model"), dict):
        if value.get("lora"):
            raise ConfigError(f"{where}: a model with a LoRA applied (lora:) cannot be expressed; list the LoRA "
                              f"adapter directory itself as a model (mmadapt applies it to base_model)")
        value = value["model"].get("path")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a model directory (a string), got {value!r}")
    if "+" in value and not Path(value).exists():
        raise ConfigError(f"{where}: {value!r} is mergekit's model+lora syntax, which mmadapt cannot express; list the "
                          f"LoRA adapter directory itself as a model (mmadapt applies it to base_model)")
    return value


def _parameters(params: Any, where: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values, got {params!r}")
    out = {}
    for key, value in params.items():
        if key in IGNORED_PARAMETERS:
            continue
        if key not in PARAMETERS:
            raise ConfigError(f"{where}.{key}: mmadapt cannot express this mergekit parameter; valid: "
                              f"{', '.join(list(PARAMETERS) + list(IGNORED_PARAMETERS))}")
        out[PARAMETERS[key]] = value
    return out


def _num_layers(model: str, where: str) -> int | None:
    """num_hidden_layers of a model directory (HF layout, or an mmadapt checkpoint's llm/); None if unknown."""
    for config in (Path(model) / "config.json", Path(model) / "llm" / "config.json"):
        if config.is_file():
            try:
                data = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"{where}: cannot read {config}: {e}") from e
            data = data.get("text_config", data)
            layers = data.get("num_hidden_layers", data.get("n_layer"))
            return int(layers) if isinstance(layers, int) else None
    return None


def _slices_as_models(slices: Any, where: str) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """One output slice whose sources each span every layer -> (models, slice parameters, slice base_model)."""
    if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], dict):
        count = len(slices) if isinstance(slices, list) else "no"
        raise ConfigError(f"{where}: {count} output slices; mmadapt merges whole models, so it reads exactly one "
                          f"slice whose sources cover every layer (layer stacking / frankenmerges are mergekit-only)")
    out_slice = slices[0]
    unknown = set(out_slice) - {"sources", "parameters", "base_model"}
    if unknown:
        raise ConfigError(f"{where}[0].{sorted(unknown)[0]}: cannot be expressed; valid: sources, parameters, base_model")
    sources = out_slice.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{where}[0].sources: expected a list of {{model, layer_range}}, got {sources!r}")
    models = []
    for i, source in enumerate(sources):
        at = f"{where}[0].sources[{i}]"
        if not isinstance(source, dict) or set(source) - {"model", "layer_range", "parameters"}:
            raise ConfigError(f"{at}: expected {{model, layer_range, parameters}}, got {source!r}")
        model = _model_ref(source.get("model"), f"{at}.model")
        layer_range = source.get("layer_range")
        total = _num_layers(model, at)
        if (not isinstance(layer_range, list) or len(layer_range) != 2 or layer_range[0] != 0
                or (total is not None and layer_range[1] != total)):
            raise ConfigError(f"{at}.layer_range: {layer_range!r} does not select every layer"
                              f"{f' [0, {total}]' if total is not None else ''} of {model}; mmadapt merges whole "
                              f"models (partial layer ranges are mergekit-only)")
        models.append({"model": model, "parameters": source.get("parameters")})
    return models, out_slice.get("parameters") or {}, out_slice.get("base_model")


def from_mergekit(data: dict[str, Any], where: str = "mergekit config") -> dict[str, Any]:
    """A mergekit config mapping -> the equivalent mmadapt merge config mapping (see the module docstring)."""
    for key in data:
        if key in REFUSED_KEYS:
            raise ConfigError(f"{where}: {key}: {REFUSED_KEYS[key]}")
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: {key}: not a mergekit key mmadapt reads; valid: {', '.join(sorted(TOP_KEYS))}")
    method = data.get("merge_method")  # a missing or non-string method is bad input (exit 2), never a KeyError
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{where}: merge_method: {method!r} cannot be expressed by mmadapt; valid: {', '.join(METHODS)}")
    if ("models" in data) == ("slices" in data):
        raise ConfigError(f"{where}: give exactly one of models: or slices:")
    parameters = _parameters(data.get("parameters"), f"{where}: parameters")
    base_model = _model_ref(data["base_model"], f"{where}: base_model") if data.get("base_model") else None
    if "slices" in data:
        models, slice_params, slice_base = _slices_as_models(data["slices"], f"{where}: slices")
        parameters.update(_parameters(slice_params, f"{where}: slices[0].parameters"))  # the slice's win
        base_model = _model_ref(slice_base, f"{where}: slices[0].base_model") if slice_base else base_model
    else:
        if not isinstance(data["models"], list) or not data["models"]:
            raise ConfigError(f"{where}: models: expected a list of {{model, parameters}}, got {data['models']!r}")
        models = []
        for i, entry in enumerate(data["models"]):
            if not isinstance(entry, dict) or "model" not in entry or set(entry) - {"model", "parameters"}:
                raise ConfigError(f"{where}: models[{i}]: expected {{model, parameters}}, got {entry!r}")
            models.append({"model": _model_ref(entry["model"], f"{where}: models[{i}].model"),
                           "parameters": entry.get("parameters")})
    out_models = []
    for i, m in enumerate(models):
        if base_model is not None and m["model"] == base_model and method != "slerp":
            continue  # mergekit lists the base among the models; task-vector methods give it no parameters
        params = _parameters(m["parameters"], f"{where}: models[{i}].parameters")
        out_models.append({"model": m["model"], "parameters": params})
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"{where}: {'out_dtype' if data.get('out_dtype') else 'dtype'}: {dtype!r} is not valid; "
                          f"valid: {', '.join(DTYPES)}")
    _check_tokenizer_source(data.get("tokenizer_source"), base_model, out_models, where)
    config: dict[str, Any] = {"method": method, "models": out_models, "parameters": parameters}
    if base_model is not None:
        config["base_model"] = base_model
    if dtype is not None:
        config["dtype"] = DTYPES[dtype]
    return config


def _check_tokenizer_source(source: Any, base_model: str | None, models: list[dict[str, Any]], where: str) -> None:
    """mmadapt merges models whose vocabularies are identical (checked) and copies the reference's tokenizer
    (base_model, else models[0]): `base`, `union` (the union of identical vocabularies) and the reference
    model itself all name that tokenizer; another model's tokenizer cannot be expressed."""
    reference = base_model or (models[0]["model"] if models else None)
    if source in (None, "base", "union") or source == reference:
        return
    raise ConfigError(f"{where}: tokenizer_source: {source!r} cannot be expressed; mmadapt keeps the tokenizer of "
                      f"{reference} (valid: base, union, {reference}); the models' vocabularies must be identical")


def translate(source: str | Path | dict[str, Any]) -> str | Path | dict[str, Any]:
    """`source` itself if it is an mmadapt merge config; the translated mapping if it is a mergekit one."""
    if isinstance(source, dict):
        return from_mergekit(source) if is_mergekit_config(source) else source
    data = read_yaml(source)
    return from_mergekit(data, where=str(source)) if is_mergekit_config(data) else source
