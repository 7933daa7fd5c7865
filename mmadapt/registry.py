"""Name -> lazy "module:attr" tables for every pluggable part, and `build` that validates kwargs.

Entries are imported only when used, so nothing depends on import side effects; an unknown
name lists the valid ones.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from mmadapt.errors import ConfigError

REGISTRY: dict[str, dict[str, str]] = {
    "encoder": {
        "timm": "mmadapt.encoders.vision_timm:TimmEncoder",
        "openclip": "mmadapt.encoders.vision_openclip:OpenClipEncoder",
        "hf_vision": "mmadapt.encoders.vision_hf:HFVisionEncoder",
        "whisper": "mmadapt.encoders.audio_hf:WhisperEncoder",
        "wav2vec2": "mmadapt.encoders.audio_hf:Wav2Vec2Encoder",
        "tiny_audio": "mmadapt.encoders.audio_tiny:TinyAudioEncoder",
        "video": "mmadapt.encoders.video:VideoEncoder",
    },
    "connector": {
        "linear": "mmadapt.connectors.projector:LinearProjector",
        "mlp": "mmadapt.connectors.projector:MLPProjector",
        "qformer": "mmadapt.connectors.qformer:QFormer",
        "resampler": "mmadapt.connectors.resampler:PerceiverResampler",
    },
    "objective": {
        "sft": "mmadapt.train.objectives.sft:SFTObjective",
        "dpo": "mmadapt.train.objectives.dpo:DPOObjective",
        "ipo": "mmadapt.train.objectives.dpo:IPOObjective",
        "simpo": "mmadapt.train.objectives.simpo:SimPOObjective",
        "orpo": "mmadapt.train.objectives.orpo:ORPOObjective",
        "kto": "mmadapt.train.objectives.kto:KTOObjective",
    },
    "merge_method": {
        "linear": "mmadapt.merge.methods:linear",
        "task_arithmetic": "mmadapt.merge.methods:task_arithmetic",
        "ties": "mmadapt.merge.methods:ties",
        "dare_linear": "mmadapt.merge.methods:dare_linear",
        "dare_ties": "mmadapt.merge.methods:dare_ties",
        "slerp": "mmadapt.merge.methods:slerp",
    },
    "edit_method": {
        "rome": "mmadapt.editing.rome:apply_rome",
        "memit": "mmadapt.editing.memit:apply_memit",
        "ft": "mmadapt.editing.ft:apply_ft",
    },
    "quickstart": {
        "vlm": "mmadapt.quickstart.vlm:run",
        "audio": "mmadapt.quickstart.audio:run",
        "video": "mmadapt.quickstart.video:run",
        "dpo": "mmadapt.quickstart.dpo:run",
        "rag": "mmadapt.quickstart.rag:run",
        "edit": "mmadapt.quickstart.edit:run",
        "merge": "mmadapt.quickstart.merge:run",
        "hf-vlm": "mmadapt.quickstart.hf_vlm:run",
    },
    "data_format": {  # record layouts (mmadapt.data.formats): name -> RecordFormat
        "llava": "mmadapt.data.formats.llava:FORMAT",
        "sharegpt": "mmadapt.data.formats.sharegpt:FORMAT",
        "openai": "mmadapt.data.formats.openai:FORMAT",
        "alpaca": "mmadapt.data.formats.alpaca:FORMAT",
    },
    "eval_task": {  # `mmadapt eval` task kinds: (model, task, items, root, batch_size) -> Scored
        "short_answer": "mmadapt.eval.tasks:short_answer",
        "multiple_choice": "mmadapt.eval.tasks:multiple_choice",
        "generation": "mmadapt.eval.tasks:generation",
        "perplexity": "mmadapt.eval.tasks:perplexity",
        "preference": "mmadapt.eval.tasks:preference",
        "edits": "mmadapt.eval.tasks:edits",
        "retrieval": "mmadapt.eval.tasks:retrieval",
    },
    "dataset_generator": {
        "shapes": "mmadapt.quickstart.shapes:generate",
        "shapes_pairs": "mmadapt.quickstart.dpo:generate_pairs",
        "tones": "mmadapt.quickstart.tones:generate",
        "motion": "mmadapt.quickstart.motion:generate",
    },
}


def names(kind: str) -> list[str]:
    """Registered names of one kind."""
    return sorted(_table(kind))


def _table(kind: str) -> dict[str, str]:
    if kind not in REGISTRY:
        raise KeyError(f"no registry kind {kind!r}; kinds: {sorted(REGISTRY)}")
    return REGISTRY[kind]


def resolve(kind: str, name: str, where: str = "") -> Any:
    """Import and return the object registered as `name` in the `kind` table."""
    table = _table(kind)
    if not isinstance(name, str):  # a mapping or list from YAML is unhashable: say what a name is
        place = f"{where}: " if where else ""
        raise ConfigError(f"{place}a {kind} name must be a string, got {type(name).__name__} {name!r}; "
                          f"valid: {', '.join(sorted(table))}")
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        place = f"{where}: " if where else ""
        raise ConfigError(f"{place}unknown {kind} {name!r}{hint}; valid: {', '.join(sorted(table))}")
    module_name, attr = table[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def build(kind: str, spec: dict[str, Any], where: str = "", **context: Any) -> Any:
    """Build a registered class from `{name: ..., **kwargs}`.

    The class declares `config_class` (a dataclass); kwargs are validated against it
    (unknown keys and wrong types raise ConfigError naming `where.key`), then the class is
    constructed as `cls(config, **context)` (context: e.g. in_dim/out_dim for connectors).
    """
    from mmadapt.config import from_dict

    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where or kind}: expected a mapping with a 'name' key; valid names: {', '.join(names(kind))}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    cls = resolve(kind, spec["name"], where=f"{where}.name" if where else "name")
    config = from_dict(cls.config_class, kwargs, path=where)
    return cls(config, **context)


def validate(kind: str, spec: dict[str, Any], where: str) -> None:
    """Check a `{name, **kwargs}` spec without building it (used when a run config is loaded)."""
    from mmadapt.config import from_dict

    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'name' key; valid names: {', '.join(names(kind))}")
    cls = resolve(kind, spec["name"], where=f"{where}.name")
    from_dict(cls.config_class, {k: v for k, v in spec.items() if k != "name"}, path=where)
