"""LoRA adapters in merges: an adapter seen as the full model base + B @ A, or adapters combined into one via SVD.

A peft adapter directory (adapter_config.json + adapter_model.safetensors) holds, per adapted
module X, `X.lora_A.weight [r, in]` and `X.lora_B.weight [out, r]` (embeddings:
`X.lora_embedding_A [r, num_embeddings]`, `X.lora_embedding_B [dim, r]`), plus full copies of
`modules_to_save`. The delta for `X.weight` is `scale * B @ A` (transposed for embeddings and
fan_in_fan_out layers), scale = lora_alpha / r (or / sqrt(r) with rslora), with per-module rank
and alpha patterns resolved by peft's own matcher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmadapt.errors import ConfigError, DataError
from mmadapt.io import read_json
from mmadapt.peft_names import ADAPTER_CONFIG, PEFT_PREFIX, unwrap_base_layer
from mmadapt.merge.lazy import TensorInfo, TensorSource

PREFIX = PEFT_PREFIX
_FACTORS = {".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False),
            ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True)}


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
    """scale * B @ A: A [r, in], B [out, r] -> [out, in] (transposed: [in, out], embeddings and Conv1D)."""
    delta = b.float() @ a.float() * scale
    return delta.T if transpose else delta


def lora_factors(delta: torch.Tensor, rank: int, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-`rank` factors (A [rank, in], B [out, rank]) with B @ A ~ delta (scale 1), by truncated SVD.

    The singular values are split evenly (sqrt on each side) so A and B have similar norms, as
    trained adapters do. `transpose`: delta is stored transposed (embeddings), factor delta.T.
    """
    matrix = (delta.T if transpose else delta).float()  # [out, in]
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)  # u [out, k], s [k], vh [k, in]
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    a = torch.zeros(rank, matrix.shape[1], dtype=matrix.dtype)
    b = torch.zeros(matrix.shape[0], rank, dtype=matrix.dtype)
    # rank above min(out, in): zero padding keeps one `r` for every module (no rank_pattern needed)
    a[:r] = root[:, None] * vh[:r]  # [r, in]
    b[:, :r] = u[:, :r] * root  # [out, r]
    return a, b


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight: its factor tensors in the adapter file and how to combine them."""

    target: str  # the base tensor it changes, e.g. "model.layers.0.self_attn.q_proj.weight"
    a_name: str
    b_name: str
    scale: float
    transpose: bool
    embedding: bool


class Adapter:
    """A peft LoRA adapter directory, read lazily; `delta(target)` is the change it makes to one base tensor."""

    def __init__(self, directory: str | Path, label: str) -> None:
        self.directory = Path(directory)
        self.label = label
        path = self.directory / ADAPTER_CONFIG
        self.config: dict[str, Any] = read_json(path, f"{label}: {ADAPTER_CONFIG}", DataError, expect=dict)
        peft_type = self.config.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise ConfigError(f"{label}: a {peft_type} adapter; mmadapt merges LoRA adapters only")
        for key in ("use_dora", "lora_bias"):
            if self.config.get(key):
                raise ConfigError(f"{label}: {key}=true adapters cannot be merged tensor by tensor; "
                                  f"merge them into their base first (mmadapt export) and merge the full models")
        if self.config.get("trainable_token_indices") or self.config.get("layer_replication"):
            raise ConfigError(f"{label}: trainable_token_indices / layer_replication adapters are not supported; "
                              f"merge them into their base first (mmadapt export)")
        self.source = TensorSource.from_dir(self.directory, label, basename="adapter_model")
        self.modules: dict[str, LoraModule] = {}
        self.replacements: dict[str, str] = {}  # base tensor -> adapter tensor holding its full new value
        self.base_layers: set[str] = set()  # the replacements that are saved embedding base layers
        self._index()

    def _scale(self, module: str, rank: int) -> float:
        from peft.utils.other import get_pattern_key

        alpha_pattern = self.config.get("alpha_pattern") or {}
        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), self.config.get("lora_alpha", 8))
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def _index(self) -> None:
        factors: dict[str, dict[str, str]] = {}
        embedding: dict[str, bool] = {}
        for name in self.source.names():
            if not name.startswith(PREFIX):
                raise DataError(f"{self.label}: tensor {name} does not start with {PREFIX!r}; not a peft causal-LM adapter")
            short = name[len(PREFIX):]
            for suffix, (which, is_embedding) in _FACTORS.items():
                if short.endswith(suffix):
                    module = short[: -len(suffix)]
                    factors.setdefault(module, {})[which] = name
                    embedding[module] = is_embedding
                    break
            else:
                if "lora_" in short:
                    raise DataError(f"{self.label}: unsupported adapter tensor {name} (supported: LoRA A/B of linear "
                                    f"and embedding layers, and modules_to_save)")
                # modules_to_save copies, and embedding base layers (peft saves them in case tokens were added)
                target = unwrap_base_layer(short)
                self.replacements[target] = name
                if target != short:
                    self.base_layers.add(target)
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        for module, pair in factors.items():
            if set(pair) != {"A", "B"}:
                raise DataError(f"{self.label}: module {module} has lora_{''.join(pair)} but not both A and B")
            rank = self.source.info[pair["A"]].shape[0]
            self.modules[f"{module}.weight"] = LoraModule(
                target=f"{module}.weight", a_name=pair["A"], b_name=pair["B"], scale=self._scale(module, rank),
                transpose=embedding[module] or fan_in_fan_out, embedding=embedding[module])

    def rank(self, target: str) -> int:
        return self.source.info[self.modules[target].a_name].shape[0]

    def delta_shape(self, target: str) -> tuple[int, ...]:
        m = self.modules[target]
        out_dim, in_dim = self.source.info[m.b_name].shape[0], self.source.info[m.a_name].shape[1]
        return (in_dim, out_dim) if m.transpose else (out_dim, in_dim)

    def check_base(self, base: dict[str, TensorInfo], base_label: str) -> None:
        """Every adapted tensor exists in the base with the shape the factors produce."""
        for target in sorted(self.modules):
            if target not in base:
                raise ConfigError(f"{self.label}: adapts tensor {target}, which {base_label} does not have")
            if self.delta_shape(target) != base[target].shape:
                raise ConfigError(f"{self.label}: tensor {target}: B @ A has shape {list(self.delta_shape(target))} "
                                  f"but {base_label} has {list(base[target].shape)}")
        for target, name in sorted(self.replacements.items()):
            if target not in base:
                raise ConfigError(f"{self.label}: replaces tensor {target} ({name}), which {base_label} does not have")
            if self.source.info[name].shape != base[target].shape:
                raise ConfigError(f"{self.label}: tensor {target}: the adapter's copy has shape "
                                  f"{list(self.source.info[name].shape)} but {base_label} has {list(base[target].shape)} "
                                  f"(resized vocabulary? resize the base model first)")

    def delta(self, target: str) -> torch.Tensor | None:
        m = self.modules.get(target)
        if m is None:
            return None
        return lora_delta(self.source.get(m.a_name), self.source.get(m.b_name), m.scale, m.transpose)


class AdaptedSource:
    """A base model's tensors with one adapter applied: looks like a TensorSource of the merged model."""

    def __init__(self, base: TensorSource, adapter: Adapter) -> None:
        adapter.check_base(base.info, base.label)
        self.base, self.adapter = base, adapter
        self.label = adapter.label
        self.info = base.info

    def names(self) -> list[str]:
        return self.base.names()

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def get(self, name: str) -> torch.Tensor:
        # a saved embedding base layer (or a modules_to_save copy) stands in for the base tensor
        replacement = self.adapter.replacements.get(name)
        base = self.adapter.source.get(replacement) if replacement else self.base.get(name)
        delta = self.adapter.delta(name)
        return base if delta is None else base.float() + delta  # float32: the merge methods compute in it anyway


def combined_adapter_config(adapters: list[Adapter], rank: int, targets: list[str], base_model: str | None) -> dict[str, Any]:
    """adapter_config.json for the combined adapter: rank `rank`, alpha = rank (scale 1, as factored)."""
    config = dict(adapters[0].config)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
                  modules_to_save=None, inference_mode=True,
                  # exact module names: peft matches them whatever patterns the inputs used
                  target_modules=sorted({t[: -len(".weight")] for t in targets}))
    if base_model is not None:
        config["base_model_name_or_path"] = base_model
    return config
