"""Per-architecture module templates as data, keyed by `config.model_type` (never by a model's name).

Each entry says where a transformer block lives, which module is the MLP output projection that
ROME/MEMIT rewrite, and how that projection stores its weight (`out_in` for `nn.Linear`,
`in_out` for GPT-2's `Conv1D`). Supporting a new family is one more entry in `SPECS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mmadapt.errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    """Module name templates ("{}" = the layer index) for one model family."""

    model_type: str
    layer: str  # a transformer block: its output is the residual stream
    mlp: str  # the whole MLP: its output is what causal tracing restores
    attn: str
    rewrite: str  # the MLP output projection whose weight ROME/MEMIT/FT-L change
    embed: str  # token embeddings (causal tracing corrupts their output)
    weight_layout: Literal["out_in", "in_out"] = "out_in"

    def layer_name(self, layer: int) -> str:
        return self.layer.format(layer)

    def mlp_name(self, layer: int) -> str:
        return self.mlp.format(layer)

    def attn_name(self, layer: int) -> str:
        return self.attn.format(layer)

    def rewrite_name(self, layer: int) -> str:
        return self.rewrite.format(layer)

    def weight_name(self, layer: int) -> str:
        """The parameter name (as in `model.named_parameters()`) edited at `layer`."""
        return f"{self.rewrite.format(layer)}.weight"

    def to_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as a [d_out, d_in] matrix (a view; Conv1D stores [d_in, d_out])."""
        return weight.T if self.weight_layout == "in_out" else weight

    def from_out_in(self, matrix: torch.Tensor) -> torch.Tensor:
        """A [d_out, d_in] update in the parameter's own layout."""
        return matrix.T.contiguous() if self.weight_layout == "in_out" else matrix


_LLAMA_LIKE = {
    "layer": "model.layers.{}",
    "mlp": "model.layers.{}.mlp",
    "attn": "model.layers.{}.self_attn",
    "rewrite": "model.layers.{}.mlp.down_proj",
    "embed": "model.embed_tokens",
}

# model_type -> templates. Add a family here (rome's hparams/*.json and mergekit's architecture
# files carry the same knowledge as data).
SPECS: dict[str, dict[str, str]] = {
    "gpt2": {
        "layer": "transformer.h.{}",
        "mlp": "transformer.h.{}.mlp",
        "attn": "transformer.h.{}.attn",
        "rewrite": "transformer.h.{}.mlp.c_proj",
        "embed": "transformer.wte",
        "weight_layout": "in_out",  # transformers' Conv1D keeps [d_in, d_out]
    },
    "gptj": {
        "layer": "transformer.h.{}",
        "mlp": "transformer.h.{}.mlp",
        "attn": "transformer.h.{}.attn",
        "rewrite": "transformer.h.{}.mlp.fc_out",
        "embed": "transformer.wte",
    },
    "gpt_neox": {
        "layer": "gpt_neox.layers.{}",
        "mlp": "gpt_neox.layers.{}.mlp",
        "attn": "gpt_neox.layers.{}.attention",
        "rewrite": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
        "embed": "gpt_neox.embed_in",
    },
    "llama": dict(_LLAMA_LIKE),
    "qwen2": dict(_LLAMA_LIKE),
    "mistral": dict(_LLAMA_LIKE),
}


def supported() -> list[str]:
    return sorted(SPECS)


def get_spec(model_type: str, override: dict[str, Any] | None = None) -> ArchSpec:
    """The spec of `model_type`, or `override` (the same keys as a `SPECS` entry) for a family not listed."""
    if override is not None:
        try:
            spec = ArchSpec(model_type=model_type, **override)
        except TypeError as e:
            raise ConfigError(f"spec override for {model_type!r}: {e}; keys: layer, mlp, attn, rewrite, embed, weight_layout") from e
        for key in ("layer", "mlp", "attn", "rewrite"):
            template = getattr(spec, key)
            try:  # a user's template: '{name}' or a stray brace is bad input (exit 2), never a KeyError
                ok = isinstance(template, str) and template.format(0) != template
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"spec override for {model_type!r}: {key}={template!r} must be a module name with "
                                  "'{}' where the layer index goes, e.g. 'model.layers.{}.mlp'")
        return spec
    if model_type not in SPECS:
        raise ConfigError(
            f"knowledge editing does not know model_type {model_type!r}; supported: {', '.join(supported())}. "
            "Add an entry to mmadapt.editing.spec.SPECS (or pass spec=...) naming the block, MLP, attention, "
            "MLP output projection and embedding modules with '{}' for the layer index, e.g. "
            f"{SPECS['llama']}"
        )
    return ArchSpec(model_type=model_type, **SPECS[model_type])


# Decoders that exist only inside a vision-language model, and the causal-LM family whose module names they share.
VLM_DECODERS = {"qwen2_5_vl_text": "qwen2"}


def vlm_spec(vlm_type: str, text_type: str) -> ArchSpec:
    """The language model's spec inside an HF vision-language model: its decoder's templates, re-rooted at the
    family's language-model module (e.g. llava: "model.layers.{}" -> "model.language_model.layers.{}")."""
    from mmadapt.hf.families import FAMILIES

    text = get_spec(VLM_DECODERS.get(text_type, text_type))
    root = FAMILIES[vlm_type].language_model + "."
    fields = {k: getattr(text, k) for k in ("layer", "mlp", "attn", "rewrite", "embed")}
    moved = {k: (root + v[len("model."):] if v.startswith("model.") else root + v) for k, v in fields.items()}
    return ArchSpec(model_type=vlm_type, weight_layout=text.weight_layout, **moved)


def spec_for(model: nn.Module, override: dict[str, Any] | None = None) -> ArchSpec:
    """The spec of a HF causal LM (read from `model.config.model_type`), checked against its modules; for an HF
    vision-language model, the spec of the language model inside it."""
    from mmadapt.hf.families import FAMILIES

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ConfigError(f"{type(model).__name__} has no config.model_type; knowledge editing needs a HF causal LM")
    if model_type in FAMILIES and override is None:
        spec = vlm_spec(model_type, config.text_config.model_type)
    else:
        spec = get_spec(model_type, override)
    modules = dict(model.named_modules())
    for template in (spec.layer, spec.mlp, spec.attn, spec.rewrite):
        if template.format(0) not in modules:
            raise ConfigError(
                f"model_type {model_type!r}: module {template.format(0)!r} not found in {type(model).__name__} "
                "(a peft-wrapped model? merge adapters first; or fix the spec's templates)"
            )
    if spec.embed not in modules:
        raise ConfigError(f"model_type {model_type!r}: embedding module {spec.embed!r} not found in {type(model).__name__}")
    return spec


def num_layers(model: nn.Module) -> int:
    config = getattr(model.config, "text_config", None) or model.config  # a VLM's decoder is its text model
    return int(config.num_hidden_layers)


def check_layers(model: nn.Module, layers: list[int], key: str) -> list[int]:
    """Validate user-given layer indices (negative ones count from the end)."""
    n = num_layers(model)
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise ConfigError(f"{key}: layer {layer} out of range; the model has {n} layers (0..{n - 1})")
        out.append(layer % n)
    if len(set(out)) != len(out):
        raise ConfigError(f"{key}: repeated layer in {layers}")
    return sorted(out)


def default_rome_layer(model: nn.Module) -> int:
    """An early-middle layer, where causal tracing finds factual recall in GPT-style models (ROME §2)."""
    return max(0, (num_layers(model) - 1) // 3)


def default_memit_layers(model: nn.Module) -> list[int]:
    """A few consecutive early-middle layers (MEMIT uses 3-8 of GPT-J's 28)."""
    n = num_layers(model)
    start = max(0, n // 8)
    count = max(1, min(5, n // 4))
    return list(range(start, min(n, start + count)))
