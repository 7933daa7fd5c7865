"""The connector base class: built from (config, in_dim, out_dim); `num_tokens(N) -> M`."""

from __future__ import annotations

import abc
from typing import Literal

import torch
from torch import nn

# Query-based connectors (Q-Former, resampler) see the features as a set: without positions, where a patch or
# frame was is lost (the tiny vlm quickstart's "where is the shape?" stayed near chance). Qwen-VL's adapter adds
# 2-D sin-cos positions to the cross-attention keys for the same reason; a 1-D table marks the encoder's order.
Positions = Literal["sinusoidal", "none"]


def with_positions(features: torch.Tensor, positions: Positions) -> torch.Tensor:
    """`features` [B, N, D] plus a fixed sinusoidal table over the N positions (or unchanged for "none")."""
    if positions == "none":
        return features
    from mmadapt.encoders.positions import sinusoidal_embedding

    table = sinusoidal_embedding(features.shape[1], features.shape[2])  # [N, D]
    return features + table.to(device=features.device, dtype=features.dtype)


def require_positive(config: object, keys: tuple[str, ...]) -> None:
    """A connector config's size fields must be >= 1 (a ValueError naming the key otherwise)."""
    for key in keys:
        if getattr(config, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(config, key)}")


class BaseConnector(nn.Module, abc.ABC):
    config_class: type

    def __init__(self, config, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config = config
        self.in_dim = in_dim
        self.out_dim = out_dim

    def num_tokens(self, num_features: int) -> int:
        """M output tokens for N input features (identity for per-token projectors)."""
        return num_features

    @abc.abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, in_dim] -> [B, num_tokens(N), out_dim]."""
