"""Per-token projectors: `linear` and `mlp` (LLaVA-1.5's GELU MLP, depth configurable)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmadapt.connectors.base import BaseConnector


@dataclass
class LinearConfig:
    bias: bool = True


@dataclass
class MLPConfig:
    depth: int = 2  # number of Linear layers (LLaVA-1.5: 2, "mlp2x_gelu")
    hidden_dim: int | None = None  # default: out_dim

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


class LinearProjector(BaseConnector):
    config_class = LinearConfig

    def __init__(self, config: LinearConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=config.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # [B, N, in] -> [B, N, out]


class MLPProjector(BaseConnector):
    config_class = MLPConfig

    def __init__(self, config: MLPConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        hidden = config.hidden_dim or out_dim
        dims = [in_dim] + [hidden] * (config.depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(config.depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < config.depth - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)  # [B, N, in] -> [B, N, out]
