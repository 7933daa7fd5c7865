"""`mmadapt merge CONFIG.yaml --out DIR`: the merge config, the checks before any work, the streamed run.

    method: ties                      # linear | task_arithmetic | ties | dare_linear | dare_ties | slerp
    base_model: runs/base             # HF model dir or mmadapt checkpoint (task-vector methods need it)
    models:
      - model: runs/sft-a             # HF model dir, mmadapt checkpoint or LoRA adapter dir
        parameters: {weight: 1.0, density: 0.5}
      - model: runs/sft-b
        parameters:
          weight: [{filter: self_attn, value: 0.7}, {value: 1.0}]
          density: 0.5
    parameters: {scaling: 1.0}        # method-wide; weight/density here are the models' defaults
    dtype: bfloat16                   # output dtype (default: the reference model's)

Tensors are merged one name at a time, read from the inputs' shards and appended to the output
shards as they are produced (lazy.py), so memory stays at a few tensors. The output directory is
written atomically and carries manifest.json with the inputs (and their manifests) as parents.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from tqdm.auto import tqdm

from mmadapt import registry
from mmadapt.config import load, to_dict
from mmadapt.errors import ConfigError
from mmadapt.io import atomic_write_json, check_output_dir, contained_path, output_directory
from mmadapt.lineage import MANIFEST, WEIGHT_SUFFIXES, write_manifest
from mmadapt.merge import inputs as inp
from mmadapt.merge.lazy import INDEX_SUFFIX, ShardedWriter, TensorInfo
from mmadapt.merge.lora import ADAPTER_CONFIG, PREFIX, combined_adapter_config, lora_factors
from mmadapt.merge.methods import MergeMethod
from mmadapt.merge.params import ParamResolver, check_value

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    model: str  # a directory: HF model, mmadapt checkpoint or peft LoRA adapter
    parameters: dict[str, Any] = field(default_factory=dict)  # weight, density: scalar | per-layer list | filters


@dataclass
class MergeConfig:
    method: str
    models: list[ModelSpec]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # scaling, normalize, rescale, t (+ weight/density defaults)
    dtype: str | None = None  # float32 | bfloat16 | float16; default: each tensor keeps the reference's dtype
    output: Literal["model", "adapter"] = "model"  # adapter: LoRA inputs combined into one adapter by SVD
    adapter_rank: int | None = None  # output: adapter; default: the sum of the inputs' ranks
    seed: int = 0  # DARE's random drops
    max_shard_size_mb: float = 5000.0
    check_base: bool = True  # models' lineage must contain base_model
    parts: list[dict[str, Any]] = field(default_factory=list)  # per-part methods (policies.py): [{part|filter, method}]

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: list at least one model to merge")
        if self.adapter_rank is not None and self.adapter_rank < 1:
            raise ValueError(f"adapter_rank must be >= 1, got {self.adapter_rank}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not valid; valid: {', '.join(DTYPES)} (or leave it out)")
        if self.max_shard_size_mb <= 0:
            raise ValueError(f"max_shard_size_mb must be > 0, got {self.max_shard_size_mb}")


def load_merge_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> MergeConfig:
    from mmadapt.merge.mergekit_compat import translate

    config = load(MergeConfig, translate(source), overrides)  # a mergekit YAML runs unchanged
    try:
        validate_config(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if not isinstance(source, dict) else str(e)) from None
    return config


def validate_config(config: MergeConfig) -> MergeMethod:
    """The method exists, gets the models, base and parameters it needs, and nothing it would ignore."""
    method: MergeMethod = registry.resolve("merge_method", config.method, where="method")
    inp.put_base_first(config, method)  # slerp: base_model is the t = 0 end (mergekit's convention)
    if method.num_models is not None and len(config.models) != method.num_models:
        raise ConfigError(f"models: {method.name} merges exactly {method.num_models} models, got {len(config.models)}")
    if method.needs_base and config.base_model is None:
        raise ConfigError(f"base_model: {method.name} adds task vectors (model - base) to a base; set base_model "
                          f"to the model the others were fine-tuned from")
    from mmadapt.merge.policies import check_parts

    used = [method] + [m for m in check_parts(config.parts, len(config.models), config.base_model is not None).values()
                       if not isinstance(m, str)]  # parameters of any method a part uses are read
    names = "/".join(dict.fromkeys(m.name for m in used))
    model_params = [p for m in used for p in m.model_params]
    valid_global = [p for m in used for p in m.global_params] + model_params
    for key, value in config.parameters.items():
        if key not in valid_global:
            raise ConfigError(f"parameters.{key}: not a {names} parameter; valid: {', '.join(dict.fromkeys(valid_global)) or 'none'}")
        check_value(key, value, f"parameters.{key}")
    for i, spec in enumerate(config.models):
        for key, value in spec.parameters.items():
            if key not in model_params:
                raise ConfigError(f"models[{i}].parameters.{key}: not a per-model {names} parameter; "
                                  f"valid: {', '.join(dict.fromkeys(model_params)) or 'none'}")
            check_value(key, value, f"models[{i}].parameters.{key}")
    return method


def merge_tensor(method: MergeMethod, base: torch.Tensor | None, tensors: list[torch.Tensor], params: Any,
                 dtype: torch.dtype) -> torch.Tensor:
    """One tensor name. Integer and bool buffers (checked identical beforehand) are copied, not merged."""
    reference = base if base is not None else tensors[0]
    if not reference.dtype.is_floating_point:
        return reference
    return method(base if method.needs_base else None, tensors, params).to(dtype)


def merge_state_dicts(method: MergeMethod, base: dict[str, torch.Tensor] | None, models: list[dict[str, torch.Tensor]],
                      resolver: ParamResolver, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The in-memory merge (every tensor loaded): the reference the streamed run must equal."""
    reference = base if base is not None else models[0]
    return {name: merge_tensor(method, base[name] if base is not None else None, [m[name] for m in models],
                               resolver(name), dtype or ref.dtype)
            for name, ref in reference.items()}


def _out_dtype(info: TensorInfo, config: MergeConfig) -> torch.dtype:
    return DTYPES[config.dtype] if config.dtype and info.dtype.is_floating_point else info.dtype


def _merge_part(method: MergeMethod, config: MergeConfig, base: inp.Source | None, models: list[inp.Source],
                reference: inp.Source, out_dir: Path, basename: str, desc: str, copy_only: bool = False) -> int:
    """Stream one weight set (LLM or multimodal) into `out_dir`; returns the number of tensors.

    Encoder tensors (identical in every model, checked) and `copy_only` parts are copied from `reference`."""
    from mmadapt.merge.policies import KEEP, check_parts, method_for

    policies = check_parts(config.parts, len(config.models), base is not None)
    resolver = ParamResolver([m.parameters for m in config.models], config.parameters, reference.info, config.seed)
    plan = [TensorInfo(name, _out_dtype(info, config), info.shape) for name, info in reference.info.items()]
    encoder_copy = basename == "multimodal"
    with ShardedWriter(out_dir, plan, basename=basename, max_shard_bytes=int(config.max_shard_size_mb * 1024**2)) as writer:
        for info in tqdm(plan, desc=desc, unit="tensor"):
            if copy_only or (encoder_copy and info.name.startswith(inp.ENCODER_PREFIX)):
                writer.write(info.name, reference.get(info.name).to(info.dtype))
                continue
            chosen = method_for(info.name, config.parts, policies, method)
            if chosen == KEEP:
                writer.write(info.name, reference.get(info.name).to(info.dtype))
                continue
            base_tensor = base.get(info.name) if base is not None and chosen.needs_base else None
            tensors = [m.get(info.name) for m in models]
            writer.write(info.name, merge_tensor(chosen, base_tensor, tensors, resolver(info.name), info.dtype))
            del base_tensor, tensors
    return len(plan)


def _check_combinable(adapters: list[Any], base: inp.Source | None) -> None:
    """Adapters combine into one adapter only if they hold nothing but LoRA factors of equal shapes."""
    targets = sorted({t for a in adapters for t in a.modules})
    first = {t: next(a for a in adapters if t in a.modules) for t in targets}
    for t in targets:
        for a in adapters:
            if t in a.modules and a.delta_shape(t) != first[t].delta_shape(t):
                raise ConfigError(f"{a.label}: tensor {t}: B @ A has shape {list(a.delta_shape(t))} but "
                                  f"{first[t].label} gives {list(first[t].delta_shape(t))}")
    for a in adapters:
        for target, name in sorted(a.replacements.items()):
            if target not in a.base_layers:
                raise ConfigError(f"{a.label}: holds a full copy of {target} (modules_to_save); adapters like this "
                                  f"merge only into a full model (output: model)")
            # a saved embedding base layer is harmless only if it is the base's (no tokens were added)
            if base is None or not torch.equal(a.source.get(name), base.get(target)):
                raise ConfigError(f"{a.label}: its saved embedding {target} differs from base_model's (new tokens?) "
                                  f"or base_model is unset; merge into a full model instead (output: model)")


def _merge_adapters(method: MergeMethod, config: MergeConfig, adapters: list[Any], out_dir: Path) -> tuple[int, int]:
    """Combine LoRA adapters: merge their deltas B @ A per module (base 0), re-factor to one rank by SVD."""
    targets = sorted({t for a in adapters for t in a.modules})
    first = {t: next(a for a in adapters if t in a.modules) for t in targets}
    rank = config.adapter_rank or sum(max(a.rank(t) for t in a.modules) for a in adapters)
    dtype = DTYPES[config.dtype] if config.dtype else torch.float32
    plan, keys = [], {}
    for t in targets:
        m = first[t].modules[t]
        module = t[: -len(".weight")]
        a_key, b_key = ((f"{PREFIX}{module}.lora_embedding_A", f"{PREFIX}{module}.lora_embedding_B") if m.embedding
                        else (f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"))
        rows, cols = first[t].delta_shape(t)
        out_dim, in_dim = (cols, rows) if m.transpose else (rows, cols)
        plan += [TensorInfo(a_key, dtype, (rank, in_dim)), TensorInfo(b_key, dtype, (out_dim, rank))]
        keys[t] = (a_key, b_key, m.transpose)
    resolver = ParamResolver([s.parameters for s in config.models], config.parameters, targets, config.seed)
    with ShardedWriter(out_dir, plan, basename="adapter_model", max_shard_bytes=2**62) as writer:
        for t in tqdm(targets, desc="merging adapters", unit="module"):
            shape = first[t].delta_shape(t)
            deltas = [a.delta(t) if t in a.modules else torch.zeros(shape) for a in adapters]
            merged = merge_tensor(method, torch.zeros(shape), deltas, resolver(t), torch.float32)
            a_key, b_key, transpose = keys[t]
            a, b = lora_factors(merged, rank, transpose)
            writer.write(a_key, a.to(dtype))
            writer.write(b_key, b.to(dtype))
    atomic_write_json(out_dir / ADAPTER_CONFIG, combined_adapter_config(adapters, rank, targets, config.base_model))
    return len(targets), rank


def _copy_support_files(src: Path, dst: Path, dtype: str | None) -> None:
    """Config, tokenizer and generation files of the reference model (not its weights or manifest)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if (not path.is_file() or path.name.startswith(".") or path.name == MANIFEST or path.suffix in WEIGHT_SUFFIXES
                or path.name.endswith(INDEX_SUFFIX)):
            continue
        shutil.copy2(path, dst / path.name)
    config_path = dst / "config.json"
    if dtype and config_path.is_file():
        cfg = json.loads(config_path.read_text())
        cfg["dtype"] = dtype
        if "torch_dtype" in cfg:  # configs written by transformers 4
            cfg["torch_dtype"] = dtype
        atomic_write_json(config_path, cfg)


def _copy_checkpoint_files(reference: inp.ModelInput, dst: Path) -> None:
    """mmadapt_model.yaml and the files its encoder specs point to ("@checkpoint/..."), except the LLM dir."""
    shutil.copy2(reference.path / inp.MODEL_CONFIG_FILE, dst / inp.MODEL_CONFIG_FILE)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node.startswith("@checkpoint/"):
            refs.append(node[len("@checkpoint/"):])

    walk(yaml.safe_load((reference.path / inp.MODEL_CONFIG_FILE).read_text()))
    for rel in sorted(set(refs)):
        contained_path(reference.path, rel, f"{reference.path / inp.MODEL_CONFIG_FILE}: @checkpoint/ reference")
        top = Path(rel).parts[0]
        src, target = reference.path / top, dst / top
        if top == inp.LLM_DIR or target.exists() or not src.exists():
            continue
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, target)


def run_merge(config: MergeConfig, out: str | Path, overwrite: bool = False) -> dict[str, float]:
    """Check everything, then merge into `out` (atomically, with manifest.json). Returns a summary.

    An existing `out` is replaced only if it is an earlier merge output and `overwrite` is set."""
    start = time.perf_counter()
    check_output_dir(out, "merge", overwrite)
    method = validate_config(config)
    base = inp.open_input(config.base_model, "base_model") if config.base_model else None
    models = [inp.open_input(spec.model, f"models[{i}]") for i, spec in enumerate(config.models)]
    inp.check_kinds(base, models, config.output)
    reference = base if base is not None else models[0]
    inp.check_architectures(reference, [m for m in models if m is not reference])
    if method.needs_base and config.check_base and base is not None:
        inp.check_lineage(base, models)
    run = _combine_adapters if config.output == "adapter" else _merge_models
    summary = run(method, config, base, models, Path(out), overwrite)
    summary["seconds"] = time.perf_counter() - start
    logger.info("merged %d model(s) with %s into %s in %.1f s", len(models), method.name, out, summary["seconds"])
    return summary


def _combine_adapters(method: MergeMethod, config: MergeConfig, base: inp.ModelInput | None,
                      models: list[inp.ModelInput], out: Path, overwrite: bool = False) -> dict[str, float]:
    from mmadapt.merge.lora import Adapter

    adapters = [Adapter(m.adapter_dir, m.label) for m in models]
    base_src = inp.llm_source(base, None) if base is not None else None
    for a in adapters if base_src is not None else []:
        a.check_base(base_src.info, base.label)
    _check_combinable(adapters, base_src)
    with output_directory(out, "merge", overwrite) as tmp:
        modules, rank = _merge_adapters(method, config, adapters, tmp)
        _finish(tmp, out, config, method, base, models)
    return {"modules": float(modules), "rank": float(rank)}


def _multimodal_sources(base: inp.ModelInput | None, models: list[inp.ModelInput], reference: inp.ModelInput,
                        kind: str) -> tuple[Any, list[Any], Any] | None:
    """(base, models, reference) sources of multimodal.safetensors, checked; None when there is none."""
    if kind == "adapter":  # adapters change only the LLM: the base checkpoint's connectors, as they are
        mm_base = inp.multimodal_source(base) if base.kind == "multimodal" else None
        return (None, [mm_base], mm_base) if mm_base is not None else None
    if kind != "multimodal":
        return None
    inp.check_multimodal_configs(reference, [m for m in models if m is not reference])
    mm_base = inp.multimodal_source(base) if base is not None else None
    mm_models = [inp.multimodal_source(m) for m in models]
    mm_ref = mm_base if base is not None else mm_models[0]
    lacking = [m.label for m, src in zip(models, mm_models) if (src is None) != (mm_ref is None)]
    if lacking:
        raise ConfigError(f"{', '.join(lacking)}: {'no' if mm_ref is not None else 'a'} {inp.MULTIMODAL_WEIGHTS}, "
                          f"unlike {reference.label}; the checkpoints differ in modalities")
    if mm_ref is None:
        return None
    mm_others = [s for s in mm_models if s is not mm_ref]
    inp.check_tensors(mm_ref, mm_others, "multimodal")
    encoders = [n for n in mm_ref.info if n.startswith(inp.ENCODER_PREFIX)]
    inp.check_identical(mm_ref, mm_others, encoders, "encoders must be identical to merge checkpoints "
                        "(connectors and the LLM are merged; train with encoders frozen)")
    return mm_base, mm_models, mm_ref


def _merge_models(method: MergeMethod, config: MergeConfig, base: inp.ModelInput | None,
                  models: list[inp.ModelInput], out: Path, overwrite: bool = False) -> dict[str, float]:
    """Full models out: HF directories, or mmadapt checkpoints (an adapter merge keeps its base's layout)."""
    kind = models[0].kind
    reference = base if base is not None else models[0]
    files_from = base if kind == "adapter" else reference  # config, tokenizer, mmadapt_model.yaml
    base_src = inp.llm_source(base, None) if base is not None else None
    model_srcs = [inp.llm_source(m, base) for m in models]
    ref_src = base_src if base_src is not None else model_srcs[0]
    others = [s for s in model_srcs if s is not ref_src]
    inp.check_tensors(ref_src, others, "LLM")
    _, fixed = inp.float_names(ref_src.info)
    inp.check_identical(ref_src, others, fixed, "integer/bool buffers cannot be averaged")
    inp.check_tokenizers(files_from, [m for m in models if m is not files_from])
    mm = _multimodal_sources(base, models, reference, kind)
    summary: dict[str, float] = {}
    with output_directory(out, "merge", overwrite) as tmp:
        checkpoint = files_from.kind == "multimodal"
        llm_out = tmp / inp.LLM_DIR if checkpoint else tmp
        _copy_support_files(files_from.llm_dir, llm_out, config.dtype)
        summary["llm_tensors"] = float(_merge_part(method, config, base_src, model_srcs, ref_src, llm_out, "model",
                                                   "merging LLM"))
        if checkpoint:
            _copy_checkpoint_files(files_from, tmp)
        if mm is not None:
            summary["multimodal_tensors"] = float(_merge_part(method, config, *mm, tmp, "multimodal",
                                                              "merging connectors", copy_only=kind == "adapter"))
        _finish(tmp, out, config, method, base, models)
    return summary


def _finish(tmp: Path, out: Path, config: MergeConfig, method: MergeMethod, base: inp.ModelInput | None,
            models: list[inp.ModelInput]) -> None:
    inputs = ([base.path] if base is not None else []) + [m.path for m in models]
    parameters = {"global": config.parameters, "models": {s.model: s.parameters for s in config.models}}
    write_manifest(tmp, "merge", config=to_dict(config), inputs=inputs, final_path=out,
                   extra={"method": method.name, "parameters": parameters})
