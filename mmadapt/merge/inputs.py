"""Merge inputs: what each directory is (HF model, mmadapt checkpoint, LoRA adapter) and the checks before any work.

Every check names the model (its config key and path) and, where it applies, the tensor:
architectures, tensor names and shapes, tokenizers, identical encoders in multimodal
checkpoints, identical non-float buffers, and that each model descends from `base_model`
according to its lineage manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from mmadapt import lineage
from mmadapt.errors import ConfigError, DataError, NotAModelError
from mmadapt.factory import checkpoint_format
from mmadapt.io import read_json
from mmadapt.merge.lazy import TensorInfo, TensorSource
from mmadapt.merge.lora import ADAPTER_CONFIG, AdaptedSource, Adapter
from mmadapt.model import ADAPTER_DIR, LLM_DIR, MODEL_CONFIG_FILE, MULTIMODAL_WEIGHTS  # the checkpoint layout

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "encoders."  # MultimodalLM.multimodal_state_dict: "encoders.<modality>..." / "connectors.<modality>..."


class Source(Protocol):
    label: str
    info: dict[str, TensorInfo]

    def get(self, name: str) -> torch.Tensor: ...


@dataclass
class ModelInput:
    """One input directory. `kind`: "hf" (a transformers model), "multimodal" (an mmadapt checkpoint) or "adapter"."""

    label: str  # e.g. "models[1] (runs/sft-b)"
    path: Path
    kind: str
    llm_dir: Path | None = None  # config.json + weights + tokenizer
    adapter_dir: Path | None = None  # a peft LoRA adapter applied on top of llm_dir (or of the base, for "adapter")

    @property
    def multimodal_file(self) -> Path | None:
        path = self.path / MULTIMODAL_WEIGHTS
        return path if self.kind == "multimodal" and path.is_file() else None


def open_input(path: str, label: str) -> ModelInput:
    """Recognise an input directory by its files; a missing or unknown one is a ConfigError naming it."""
    directory = Path(path)
    label = f"{label} ({path})"
    if not directory.is_dir():
        raise NotAModelError(f"{label}: no such directory (merges read local directories; download hub models first)")
    kind = checkpoint_format(directory, label)
    # an HF vision-language model trained by mmadapt is saved in its family's own layout (config.json, or a peft
    # adapter), not as llm/ + multimodal.safetensors: it merges as the HF model or adapter it is
    if kind == "mmadapt":
        adapter = directory / ADAPTER_DIR
        return ModelInput(label, directory, "multimodal", llm_dir=directory / LLM_DIR,
                          adapter_dir=adapter if adapter.is_dir() else None)
    if (directory / ADAPTER_CONFIG).is_file():
        return ModelInput(label, directory, "adapter", adapter_dir=directory)
    if not (directory / "config.json").is_file():
        raise NotAModelError(f"{label}: not a model directory: an HF vision-language checkpoint without config.json "
                             f"or {ADAPTER_CONFIG}")
    return ModelInput(label, directory, "hf", llm_dir=directory)


def llm_source(inp: ModelInput, base: ModelInput | None) -> Source:
    """The LLM tensors an input stands for: its own weights, with its adapter applied if it has one."""
    if inp.kind == "adapter":
        if base is None or base.llm_dir is None:
            raise ConfigError(f"{inp.label}: a LoRA adapter needs base_model (the model it was trained on)")
        return AdaptedSource(TensorSource.from_dir(base.llm_dir, base.label), Adapter(inp.adapter_dir, inp.label))
    weights = TensorSource.from_dir(inp.llm_dir, inp.label)
    if inp.adapter_dir is not None:
        return AdaptedSource(weights, Adapter(inp.adapter_dir, inp.label))
    return weights


def multimodal_source(inp: ModelInput) -> TensorSource | None:
    return TensorSource([inp.multimodal_file], inp.label) if inp.multimodal_file else None


def hf_config(inp: ModelInput) -> dict[str, Any]:
    return read_json(inp.llm_dir / "config.json", f"{inp.label}: config.json", DataError, expect=dict)


def check_kinds(base: ModelInput | None, models: list[ModelInput], output: str) -> None:
    kinds = {m.kind for m in models}
    if len(kinds) > 1:
        raise ConfigError("models mix kinds: " + "; ".join(f"{m.label} is {m.kind}" for m in models)
                          + " (merge HF models, mmadapt checkpoints or adapters of one base, not a mix)")
    kind = kinds.pop()
    if kind == "adapter":
        if base is None:
            raise ConfigError("base_model: required when models are LoRA adapters (the model they were trained on)")
        if base.kind == "adapter" or base.adapter_dir is not None:
            raise ConfigError(f"base_model {base.label}: must be a full model, not an adapter")
    elif base is not None and base.kind != kind:
        raise ConfigError(f"base_model {base.label} is {base.kind} but the models are {kind}")
    if output == "adapter" and kind != "adapter":
        raise ConfigError(f"output: adapter combines LoRA adapter directories; the models are {kind} "
                          f"(use output: model)")


def check_architectures(reference: ModelInput, inputs: list[ModelInput]) -> None:
    """Same model_type and architectures (adapters: the base class they were trained on, when recorded)."""
    ref = hf_config(reference)
    for inp in inputs:
        if inp.kind == "adapter":
            mapping = read_json(inp.adapter_dir / ADAPTER_CONFIG, f"{inp.label}: {ADAPTER_CONFIG}", DataError, expect=dict).get("auto_mapping") or {}
            trained_on = mapping.get("base_model_class")
            if trained_on and ref.get("architectures") and trained_on not in ref["architectures"]:
                raise ConfigError(f"{inp.label}: the adapter was trained on a {trained_on}, but {reference.label} "
                                  f"is {ref['architectures']}")
            continue
        cfg = hf_config(inp)
        for key in ("model_type", "architectures"):
            if cfg.get(key) != ref.get(key):
                raise ConfigError(f"{inp.label}: {key} {cfg.get(key)!r} differs from {reference.label}: {ref.get(key)!r}")


def check_tensors(reference: Source, others: list[Source], part: str) -> None:
    """Same tensor names and shapes as the reference, naming the model and the first offending tensor."""
    ref = reference.info
    for src in others:
        missing = [n for n in ref if n not in src.info]
        extra = [n for n in src.info if n not in ref]
        if missing or extra:
            what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which {reference.label} lacks"
            raise ConfigError(f"{src.label}: {part} tensors differ from {reference.label}: {what} "
                              f"({len(missing)} missing, {len(extra)} extra); different architectures cannot be merged")
        for name, info in ref.items():
            if src.info[name].shape != info.shape:
                raise ConfigError(f"{src.label}: tensor {name} has shape {list(src.info[name].shape)} but "
                                  f"{reference.label} has {list(info.shape)}")


def check_identical(reference: Source, others: list[Source], names: list[str], why: str) -> None:
    """Tensors that must not differ between models (encoders, integer buffers); read one at a time."""
    for name in names:
        ref = reference.get(name)
        for src in others:
            if not torch.equal(src.get(name), ref):
                raise ConfigError(f"{src.label}: tensor {name} differs from {reference.label}; {why}")


def check_tokenizers(reference: ModelInput, inputs: list[ModelInput]) -> None:
    """Same vocabulary (token -> id) as the reference, for every input that ships a tokenizer."""
    def vocab(inp: ModelInput) -> dict[str, int] | None:
        if inp.llm_dir is None or not any((inp.llm_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return None
        try:
            if (inp.llm_dir / "tokenizer.json").is_file():  # a fast tokenizer: read without importing transformers
                from tokenizers import Tokenizer

                return Tokenizer.from_file(str(inp.llm_dir / "tokenizer.json")).get_vocab(with_added_tokens=True)
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(inp.llm_dir)).get_vocab()
        except Exception as e:  # noqa: BLE001 - tokenizers and transformers raise many types for bad files
            raise DataError(f"{inp.label}: cannot load its tokenizer from {inp.llm_dir}: {e}") from e

    ref = vocab(reference)
    if ref is None:
        logger.warning("%s has no tokenizer files; tokenizers not compared", reference.label)
        return
    for inp in inputs:
        other = vocab(inp)
        if other is None or other == ref:
            continue
        token = next((t for t in sorted(set(ref) | set(other)) if ref.get(t) != other.get(t)))
        raise ConfigError(f"{inp.label}: tokenizer differs from {reference.label}: token {token!r} has id "
                          f"{other.get(token)} vs {ref.get(token)} (vocab sizes {len(other)} vs {len(ref)}); "
                          f"merged weights would mean different tokens")


def check_multimodal_configs(reference: ModelInput, inputs: list[ModelInput]) -> None:
    def spec(inp: ModelInput) -> dict[str, Any]:
        data = yaml.safe_load((inp.path / MODEL_CONFIG_FILE).read_text()) or {}
        return {"encoders": data.get("encoders", {}), "connectors": data.get("connectors", {})}

    ref = spec(reference)
    for inp in inputs:
        other = spec(inp)
        for key in ("encoders", "connectors"):
            if other[key] != ref[key]:
                raise ConfigError(f"{inp.label}: {MODEL_CONFIG_FILE} {key} {other[key]} differ from "
                                  f"{reference.label}: {ref[key]}")


def _weight_hashes(inp: ModelInput) -> set[str]:
    manifest = lineage.read_manifest(inp.path)
    files = manifest["files"] if manifest else lineage.hash_files(inp.path)
    llm_prefix = f"{LLM_DIR}/" if inp.kind == "multimodal" else ""
    return {h for rel, h in files.items() if rel.startswith(llm_prefix)}


def check_lineage(base: ModelInput, models: list[ModelInput]) -> None:
    """Each model's manifest chain must contain the base's LLM weights (by SHA-256) somewhere.

    A model without a manifest, or whose chain starts at a hub id, cannot be checked: a warning.
    """
    wanted = _weight_hashes(base)
    if not wanted:
        return
    for inp in models:
        manifest = lineage.read_manifest(inp.path)
        if manifest is None:
            logger.warning("%s has no manifest.json; cannot check it was fine-tuned from %s", inp.label, base.label)
            continue
        nodes, unknown = [manifest], False
        found = False
        while nodes:
            node = nodes.pop()
            files = set((node.get("files") or {}).values())
            if wanted <= files:
                found = True
                break
            if node.get("kind") == "external" and not files:
                unknown = True
            nodes.extend(node.get("parents", []))
        if found:
            continue
        if unknown:
            logger.warning("%s: its lineage starts at an unhashed input; cannot check it descends from %s", inp.label, base.label)
            continue
        raise ConfigError(f"{inp.label}: its manifest.json lineage does not contain {base.label} (no ancestor has the "
                          f"base's weight files); task vectors against another model are meaningless. Set base_model "
                          f"to the model it was fine-tuned from, or check_base: false if you are sure")


def float_names(info: dict[str, TensorInfo]) -> tuple[list[str], list[str]]:
    """(floating-point tensors, the rest: integer/bool buffers, which are copied, not merged)."""
    floats = [n for n, i in info.items() if i.dtype.is_floating_point]
    return floats, [n for n in info if n not in set(floats)]


def put_base_first(config: Any, method: Any) -> None:
    """For a method whose t = 0 end is base_model (SLERP, as in mergekit): rewrite `config` in place to
    `models: [base_model, the other]` with no separate base, so the streamed run interpolates from the base.

    mergekit configs list the base among `models` too; either form is accepted. Idempotent."""
    if not method.base_is_start or config.base_model is None:
        return
    base = config.base_model
    if _parts_need_base(config.parts):
        # base_model is there for the parts' task-vector methods; slerp keeps models[0] -> models[1]
        logger.warning("base_model %s serves the parts that need a base; %s interpolates models[0] (t = 0) to "
                       "models[1] (t = 1)", base, method.name)
        return

    def same(path: str) -> bool:
        return path == base or Path(path).resolve() == Path(base).resolve()

    others = [spec for spec in config.models if not same(spec.model)]
    if method.num_models is not None and len(others) != method.num_models - 1:
        listed = ", ".join(spec.model for spec in config.models)
        raise ConfigError(f"models: {method.name} interpolates from base_model ({base}) to exactly "
                          f"{method.num_models - 1} other model(s); models lists {listed or 'none'} besides it")
    first = replace(config.models[0], model=base, parameters={})
    config.models = [first, *others]
    config.base_model = None


def _parts_need_base(parts: list[dict[str, Any]]) -> bool:
    from mmadapt import registry

    for part in parts or []:
        name = part.get("method") if isinstance(part, dict) else None
        if not isinstance(name, str) or name == "keep":
            continue
        try:
            if registry.resolve("merge_method", name, where="parts").needs_base:
                return True
        except ConfigError:
            continue  # policies.check_parts reports the bad name with its position
    return False
