"""What mmadapt needs to know about each Hugging Face VLM family, as data keyed by `config.model_type`.

The models and processors are the families' own (transformers); this table only says which of
their modules form the vision tower ("encoders"), the projector ("connectors") and the language
model ("llm"), so freezing, per-part learning rates, LoRA targets, merge policies and editing
speak of the same three parts as for models mmadapt composes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmadapt.errors import ConfigError
from mmadapt.peft_names import strip_peft_prefix


@dataclass(frozen=True)
class Family:
    model_type: str
    hf_class: str  # the transformers class that owns the checkpoint
    parts: dict[str, tuple[str, ...]]  # part -> parameter-name prefixes (most specific first wins)
    language_model: str  # module path of the decoder stack inside the HF model (editing, LoRA targets)

    def part_of(self, name: str) -> str | None:
        """encoders | connectors | llm for a parameter name of the HF model (peft prefixes stripped), or None."""
        name = strip_peft_prefix(name)
        best: tuple[int, str | None] = (-1, None)
        for part, prefixes in self.parts.items():
            for prefix in prefixes:
                if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best[0]:
                    best = (len(prefix), part)
        return best[1]


_LLM = ("model.language_model", "lm_head")

FAMILIES: dict[str, Family] = {
    "llava": Family("llava", "LlavaForConditionalGeneration",
                    {"encoders": ("model.vision_tower",), "connectors": ("model.multi_modal_projector",), "llm": _LLM},
                    "model.language_model"),
    "llava_next": Family("llava_next", "LlavaNextForConditionalGeneration",
                         {"encoders": ("model.vision_tower",),
                          "connectors": ("model.multi_modal_projector", "model.image_newline"), "llm": _LLM},
                         "model.language_model"),
    # Qwen2.5-VL's patch merger (its projector) sits inside the vision module: the longer prefix wins.
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
                         {"encoders": ("model.visual",), "connectors": ("model.visual.merger",), "llm": _LLM},
                         "model.language_model"),
    "idefics3": Family("idefics3", "Idefics3ForConditionalGeneration",
                       {"encoders": ("model.vision_model",), "connectors": ("model.connector",),
                        "llm": ("model.text_model", "lm_head")},
                       "model.text_model"),
}

def family_for(model_type: str, where: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not a supported vision-language family; supported: "
                          + ", ".join(f"{f.model_type} ({f.hf_class})" for f in FAMILIES.values()))
    return FAMILIES[model_type]
