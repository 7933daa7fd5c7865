"""The small Protocols every pluggable part implements (shape contracts in the docstrings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

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
class CheckedEncoder(Encoder, Protocol):
    """An encoder that can check one media file cheaply (header only) when records are read, raising DataError,
    so a corrupt file fails before training instead of mid-epoch."""

    def check(self, path: Path) -> None: ...


@runtime_checkable
class ReloadableEncoder(Encoder, Protocol):
    """An encoder whose config spec must change to rebuild it from a saved checkpoint alone: `reload_spec` returns
    that spec, writing any files it needs under `checkpoint_dir` (referenced as "@checkpoint/<relative path>")."""

    def reload_spec(self, spec: dict[str, Any], checkpoint_dir: Path, modality: str) -> dict[str, Any]: ...


@runtime_checkable
class Connector(Protocol):
    """Maps encoder features into the LLM's embedding space (an `nn.Module`).

    Built as `cls(config, in_dim=..., out_dim=...)`; `forward(features[B, N, in_dim]) -> [B, M, out_dim]`
    with `M == num_tokens(N)`.
    """

    def num_tokens(self, num_features: int) -> int: ...

    def forward(self, features: torch.Tensor) -> torch.Tensor: ...


Collator = Callable[[list[Any]], dict[str, Any]]  # examples -> one batch of tensors


@runtime_checkable
class Objective(Protocol):
    """A training loss: `loss(model, batch) -> (scalar loss, {metric: float})`.

    The math lives in pure functions on tensors; the objective only gathers the tensors.
    `num_items_in_batch` (when given) is the number of supervised items across the whole
    gradient-accumulation window and all processes, so the loss can be normalised exactly.
    `data_formats`: the `data.format` values it trains on; the format decides the examples and their collator
    (`mmadapt.data.loading.FORMATS`), so the objective never builds data itself.
    """

    data_formats: tuple[str, ...]

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@runtime_checkable
class PreparedObjective(Objective, Protocol):
    """An objective that sets itself up once before training (a reference model, or reference log-probs precomputed
    over `records`, batched by the run's own `collator`)."""

    def prepare(self, model: torch.nn.Module, records: list[Any] | None = None, collator: Collator | None = None) -> None: ...


@runtime_checkable
class EditMethod(Protocol):
    """A knowledge-editing method (registry kind "edit_method"; ROME, MEMIT, FT-L): a function
    `(model, tok, requests, hparams, cache, model_id) -> EditResult` that edits `model` in place and returns the
    deltas `{param_name: Tensor}` it added (so they can be saved, applied again and reverted exactly).
    `hparams=None` uses the method's defaults; `cache` is the covariance-statistics cache (unused by FT-L)."""

    def __call__(self, model: torch.nn.Module, tok: Any, requests: list[Any], hparams: Any = None,
                 cache: Any = None, model_id: str | None = None) -> Any: ...
