"""The small Protocols every pluggable part implements (shape contracts in the docstrings)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Encoder(Protocol):
    """A modality tower (an `nn.Module`).

    - `modality`: "image" | "audio" | "video".
    - `hidden_size`: feature width D of `forward`'s output.
    - `preprocess(raw)`: decode and transform ONE item (a path, bytes, PIL image or array) into a
      tensor of a fixed per-encoder shape, so items stack into a batch.
    - `forward(batch[B, ...]) -> features[B, N, D]`; N is the same for every item (`num_features`).
    - `config_class`: its config dataclass (built through `mmadapt.registry.build`).
    """

    modality: str
    hidden_size: int
    num_features: int

    def preprocess(self, raw: Any) -> torch.Tensor: ...

    def forward(self, batch: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Connector(Protocol):
    """Maps encoder features into the LLM's embedding space (an `nn.Module`).

    Built as `cls(config, in_dim=..., out_dim=...)`; `forward(features[B, N, in_dim]) -> [B, M, out_dim]`
    with `M == num_tokens(N)`.
    """

    def num_tokens(self, num_features: int) -> int: ...

    def forward(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Objective(Protocol):
    """A training loss: `loss(model, batch) -> (scalar loss, {metric: float})`.

    The math lives in pure functions on tensors; the objective only gathers the tensors.
    `num_items_in_batch` (when given) is the number of supervised items across the whole
    gradient-accumulation window and all processes, so the loss can be normalised exactly.
    """

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
