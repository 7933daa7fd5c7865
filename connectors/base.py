"""The connector base class: built from (config, in_dim, out_dim); `num_tokens(N) -> M`."""

from __future__ import annotations

import torch
from torch import nn


class BaseConnector(nn.Module):
    config_class: type

    def __init__(self, config, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config = config
        self.in_dim = in_dim
        self.out_dim = out_dim

    def num_tokens(self, num_features: int) -> int:
        """M output tokens for N input features (identity for per-token projectors)."""
        return num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError
