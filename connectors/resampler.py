"""Perceiver resampler connector (Flamingo / Idefics2): a fixed set of latents cross-attends to the features.

The features are first projected to the resampler width (Idefics2's modality projection); then transformers'
Idefics2PerceiverResampler runs `depth` blocks in which the latents attend to [features; latents] (GQA
attention, SwiGLU MLP, RMS norms); the latents are finally projected to the LLM width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmadapt.connectors.base import BaseConnector, Positions, require_positive, with_positions


@dataclass
class ResamplerConfig:
    num_latents: int = 64  # output tokens, whatever the number of features (Idefics2: 64)
    depth: int = 3
    hidden_size: int | None = None  # resampler width; default: out_dim (as in Idefics2)
    num_heads: int = 16
    head_dim: int = 96
    num_kv_heads: int = 4  # grouped-query attention: num_heads must be a multiple of it
    dropout: float = 0.0  # attention dropout
    positions: Positions = "sinusoidal"  # added to the projected features the latents attend to; "none": a set
    init_std: float = 0.02  # std of the random weights (Idefics2: 0.02); the latents start at N(0, 1)

    def __post_init__(self) -> None:
        require_positive(self, ("num_latents", "depth", "num_heads", "head_dim", "num_kv_heads"))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")


class PerceiverResampler(BaseConnector):
    """[B, N, in_dim] -> [B, num_latents, out_dim], whatever N is."""

    config_class = ResamplerConfig

    def __init__(self, config: ResamplerConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        from transformers import Idefics2PerceiverConfig
        from transformers.models.idefics2.modeling_idefics2 import Idefics2PerceiverResampler

        hidden = config.hidden_size or out_dim
        self.in_proj = nn.Linear(in_dim, hidden)  # [B, N, in] -> [B, N, hidden]
        self.resampler = Idefics2PerceiverResampler(
            Idefics2PerceiverConfig(
                hidden_size=hidden,
                resampler_n_latents=config.num_latents,
                resampler_depth=config.depth,
                resampler_n_heads=config.num_heads,
                resampler_head_dim=config.head_dim,
                num_key_value_heads=config.num_kv_heads,
                attention_dropout=config.dropout,
                initializer_range=config.init_std,
            )
        )
        with torch.no_grad():
            # Idefics2 initialises every latent to ones: identical latents get identical updates and never
            # diverge, so a fresh resampler would emit one token num_latents times. Random latents as in Flamingo.
            self.resampler.latents.normal_()
        self.out_proj = nn.Linear(hidden, out_dim)  # [B, M, hidden] -> [B, M, out]

    def num_tokens(self, num_features: int) -> int:
        return self.config.num_latents

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        context = with_positions(self.in_proj(features), self.config.positions)  # [B, N, hidden]
        mask = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)  # every feature is real
        return self.out_proj(self.resampler(context, attention_mask=mask))  # [B, num_latents, out]
