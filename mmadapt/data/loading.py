"""From a run's data config to (train examples, eval examples, collator): one place per data format."""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any

from mmadapt import registry
from mmadapt.config import DataConfig, unknown_key_error
from mmadapt.data.collator import FeatureCaches
from mmadapt.data.conversations import ExampleBuilder
from mmadapt.data.formats import first_path, read_dataset
from mmadapt.data.packing import PackedCollator
from mmadapt.data.preference import PreferenceTokenizer, read_kto_records, read_preference_records
from mmadapt.data.tokenisation import TokenisationSpec
from mmadapt.errors import ConfigError
from mmadapt.hf.preference import ProcessedPreferenceTokenizer
from mmadapt.hf.processing import ProcessedExampleBuilder
from mmadapt.io import atomic_directory

logger = logging.getLogger(__name__)

# data.format -> (records loader "module:function", collator "module:Class")
FORMATS: dict[str, tuple[str, str]] = {
    "conversations": ("mmadapt.data.loading:load_conversations", "mmadapt.data.collator:ConversationCollator"),
    "text": ("mmadapt.data.loading:load_conversations", "mmadapt.data.collator:ConversationCollator"),
    "preference": ("mmadapt.data.loading:load_preference", "mmadapt.data.preference:PreferenceCollator"),
    "kto": ("mmadapt.data.loading:load_kto", "mmadapt.data.preference:KTOCollator"),
}


def _load(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def generate_spec(generate: dict[str, Any], where: str = "data.generate") -> tuple[Any, str, dict[str, Any]]:
    """(generator, out, keyword arguments) of a `data.generate` section, every key checked against the
    generator's signature (run at config load, so a typo fails before any model is built)."""
    spec = dict(generate)
    name, out = spec.pop("name", None), spec.pop("out", None)
    if not name or not out:
        raise ConfigError(f"{where} needs 'name' (a generator) and 'out' (a directory)")
    generator = registry.resolve("dataset_generator", name, where=f"{where}.name")
    params = inspect.signature(generator).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):  # a typo would be a TypeError mid-run
        valid = [n for n in list(params)[1:] if params[n].kind in (params[n].POSITIONAL_OR_KEYWORD, params[n].KEYWORD_ONLY)]
        for key in spec:
            if key not in valid:
                raise unknown_key_error(str(key), valid, where)
    return generator, str(out), spec


def generate_data(data_cfg: DataConfig) -> None:
    """Write a generated dataset (`data.generate: {name, out, **kwargs}`) once; later runs reuse it."""
    generator, out, spec = generate_spec(data_cfg.generate or {})
    if (Path(out) / "train.jsonl").is_file():
        return
    logger.info("generating dataset %r into %s", data_cfg.generate["name"], out)
    with atomic_directory(out) as tmp:
        generator(tmp, **spec)


def load_conversations(source: str | list[str], spec: TokenisationSpec, data_cfg: DataConfig, stats_prefix: str):
    """Conversation (or text) examples from data files / registered datasets in any layout of mmadapt.data.formats
    (several mixed by data.weights)."""
    records = read_dataset(source, data_cfg, "text" if data_cfg.format == "text" else "conversation")
    path = first_path(source)  # media paths are absolute by now: the builders' default root no longer matters
    if spec.processor is not None:  # an HF vision-language model: its own processor renders and expands images
        builder = ProcessedExampleBuilder(spec.processor, data_cfg, path)
    else:
        builder = ExampleBuilder(spec, data_cfg, path)
    examples = builder.build(records)
    return examples, builder.stats.as_metrics(stats_prefix)


def preference_tokenizer(spec: TokenisationSpec, data_cfg: DataConfig, data_file: str | Path) -> PreferenceTokenizer:
    """The tokenizer of preference / KTO samples: an HF vision-language model's goes through its processor."""
    if spec.processor is not None:
        return ProcessedPreferenceTokenizer(spec.processor, data_cfg, data_file)
    return PreferenceTokenizer(spec, data_cfg, data_file)


def load_preference(source: str | list[str], spec: TokenisationSpec, data_cfg: DataConfig, stats_prefix: str):
    """Preference pairs (`{prompt, chosen, rejected}`) and their data statistics."""
    return read_preference_records(source, preference_tokenizer(spec, data_cfg, first_path(source)), stats_prefix)


def load_kto(source: str | list[str], spec: TokenisationSpec, data_cfg: DataConfig, stats_prefix: str):
    """KTO samples (`{prompt, completion, label}`, each with its KL row) and their data statistics."""
    return read_kto_records(source, preference_tokenizer(spec, data_cfg, first_path(source)), stats_prefix)


def load_data(spec: TokenisationSpec, data_cfg: DataConfig, feature_caches: FeatureCaches | None = None
              ) -> tuple[list, list | None, Any, dict[str, float]]:
    """Train / eval examples, the collator of the data format (reading `feature_caches`, modality -> FeatureCache,
    instead of encoding those modalities) and data statistics (truncated, skipped, ...) for the run summary."""
    if not data_cfg.train:
        raise ConfigError("data.train: no training data file given")
    loader_target, collator_target = FORMATS[data_cfg.format]
    if data_cfg.retrieval:  # QA records become conversations whose prompts carry retrieved passages (RA-DIT)
        if data_cfg.format != "conversations":
            raise ConfigError(f"data.retrieval builds conversations; data.format must be 'conversations', "
                              f"got {data_cfg.format!r}")
        loader_target = "mmadapt.rag.augment:load_retrieval_conversations"
    if spec.processor is not None and data_cfg.format == "text":
        raise ConfigError("data.format 'text' is for causal LMs; a model.vlm trains on conversations, preference "
                          "or kto data")
    if data_cfg.retrieval:  # the RA-DIT loader reads one QA file of its own
        for key in ("train", "eval"):
            if getattr(data_cfg, key) is not None and not isinstance(getattr(data_cfg, key), str):
                raise ConfigError(f"data.{key}: one QA file with data.retrieval, got {getattr(data_cfg, key)!r}")
    loader = _load(loader_target)
    train, stats = loader(data_cfg.train, spec, data_cfg, "data_train")
    evaluation = None
    if data_cfg.eval:
        evaluation, eval_stats = loader(data_cfg.eval, spec, data_cfg, "data_eval")
        stats.update(eval_stats)
    if data_cfg.packing:
        if spec.processor is not None:
            raise ConfigError("data.packing: an HF vision-language model places its positions itself (M-RoPE, image "
                              "grids); packing is for model.llm")
        return train, evaluation, PackedCollator(spec, data_cfg.max_length, feature_caches), stats
    return train, evaluation, _load(collator_target)(spec, feature_caches), stats
