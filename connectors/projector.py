"""Per-token projectors: `linear` and `mlp` (LLaVA-1.5's GELU MLP, depth configurable), with optional token reduction.

Token reduction (`pool`) works on a square grid of patch tokens (the encoder's `drop_cls: true`):
`avg` averages each `factor x factor` neighbourhood; `pixel_shuffle` (InternVL / Idefics3) concatenates it
into one token of width `in_dim * factor**2`. Either way N tokens become N / factor**2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmadapt.connectors.base import BaseConnector
from mmadapt.errors import ConfigError


@dataclass
class PoolOptions:
    pool: Literal["none", "avg", "pixel_shuffle"] = "none"
    factor: int = 2  # neighbourhood side: N tokens -> N / factor**2

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")


@dataclass
class LinearConfig(PoolOptions):
    bias: bool = True


@dataclass
class MLPConfig(PoolOptions):
    depth: int = 2  # number of Linear layers (LLaVA-1.5: 2, "mlp2x_gelu")
    hidden_dim: int | None = None  # default: out_dim

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


def grid_side(num_tokens: int, factor: int, pool: str) -> int:
    """Side s of the s x s token grid; a clear error when N is not a square grid divisible by `factor`."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ConfigError(
            f"connector pool={pool!r} needs a square grid of patch tokens, got N={num_tokens} "
            f"(a class token left in? set drop_cls: true on the encoder)"
        )
    if side % factor:
        raise ConfigError(f"connector pool={pool!r}: the {side}x{side} token grid is not divisible by factor={factor}")
    return side


def reduce_tokens(features: torch.Tensor, pool: str, factor: int) -> torch.Tensor:
    """[B, s*s, D] -> [B, (s/f)^2, D] (avg) or [B, (s/f)^2, D*f*f] (pixel_shuffle); row-major grids in and out."""
    if pool == "none" or factor == 1:
        return features
    batch, n, dim = features.shape
    side = grid_side(n, factor, pool)
    if pool == "avg":
        grid = features.transpose(1, 2).reshape(batch, dim, side, side)  # [B, D, s, s]
        return F.avg_pool2d(grid, factor).flatten(2).transpose(1, 2)  # [B, (s/f)^2, D]
    cells = side // factor
    grid = features.reshape(batch, cells, factor, cells, factor, dim)  # [B, row, dy, col, dx, D]
    # [B, row, col, dy, dx, D]: each output token holds its f x f neighbourhood, row-major, channels last
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(batch, cells * cells, factor * factor * dim)


class _PooledProjector(BaseConnector):
    """Shared token reduction in front of a per-token projection."""

    def _proj_in_dim(self) -> int:
        return self.in_dim * self.config.factor**2 if self.config.pool == "pixel_shuffle" else self.in_dim

    def num_tokens(self, num_features: int) -> int:
        if self.config.pool == "none" or self.config.factor == 1:
            return num_features
        return (grid_side(num_features, self.config.factor, self.config.pool) // self.config.factor) ** 2


class LinearProjector(_PooledProjector):
    config_class = LinearConfig

    def __init__(self, config: LinearConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        self.proj = nn.Linear(self._proj_in_dim(), out_dim, bias=config.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(reduce_tokens(features, self.config.pool, self.config.factor))  # [B, N, in] -> [B, M, out]


class MLPProjector(_PooledProjector):
    config_class = MLPConfig

    def __init__(self, config: MLPConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        hidden = config.hidden_dim or out_dim
        dims = [self._proj_in_dim()] + [hidden] * (config.depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(config.depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < config.depth - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(reduce_tokens(features, self.config.pool, self.config.factor))  # [B, N, in] -> [B, M, out]
