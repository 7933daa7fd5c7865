"""Fixed sinusoidal position tables shared by encoders that must mark time even when frozen (audio frames, video frames)."""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(length: int, dim: int) -> torch.Tensor:
    """`[length, dim]` sines and cosines at geometric frequencies (Vaswani et al.; Whisper's audio positions)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # [ceil(D/2)]
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table
