"""How peft renames a model's parameters, in one place: the wrapper prefix and the markers its injected layers add."""

from __future__ import annotations

ADAPTER_CONFIG = "adapter_config.json"  # what marks a saved peft adapter directory
PEFT_PREFIX = "base_model.model."  # a PeftModel's state dict (and a saved adapter's tensors) start with this
BASE_LAYER = ".base_layer"  # a LoRA-wrapped module keeps the original weights under `<module>.base_layer.*`
_WRAPPERS = (BASE_LAYER, ".modules_to_save.default", ".original_module")


def unwrap_base_layer(key: str) -> str:
    """`<module>.base_layer.weight` -> `<module>.weight`: an injected layer's base weight under its own name."""
    return key.replace(f"{BASE_LAYER}.", ".")


def wrap_base_layer(key: str, present: set[str]) -> str:
    """The inverse for loading plain weights into a peft-wrapped model: `key` when the model has it (`present`),
    else the name its LoRA-wrapped module keeps it under."""
    if key in present:
        return key
    return key.replace(".weight", f"{BASE_LAYER}.weight").replace(".bias", f"{BASE_LAYER}.bias")


def strip_peft_prefix(name: str) -> str:
    """A parameter name of a peft-wrapped model under the HF model's own naming (prefix and wrapper markers gone)."""
    name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
    for marker in _WRAPPERS:
        name = name.replace(marker, "")
    return name
