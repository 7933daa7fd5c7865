"""BLIP-2 Q-Former connector: learned queries attend to the encoder features through transformers' Blip2QFormerModel.

Each layer: self-attention over the queries, cross-attention to the (layer-normed) encoder features on every
`cross_attention_every`-th layer, a feed-forward block, post-layer-norms (BERT layout). The query outputs are
projected to the LLM width. As in BLIP-2, the layers can start from a BERT-family checkpoint (`init_from`):
self-attention and feed-forward weights are copied, cross-attention starts random.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mmadapt.connectors.base import BaseConnector, Positions, require_positive, with_positions
from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class QFormerConfig:
    num_query_tokens: int = 32
    num_layers: int = 12  # BLIP-2 defaults (BERT-base sizes) so `init_from: bert-base-uncased` fits as is
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_every: int = 2  # cross-attention on layers 0, k, 2k, ... (1: every layer; BLIP-2: 2)
    dropout: float = 0.0
    positions: Positions = "sinusoidal"  # added to the (normed) features the queries attend to; "none": a set
    init_std: float = 0.02  # std of the random weights and queries (BERT/BLIP-2: 0.02)
    init_from: str | None = None  # a BERT-family checkpoint (hub id or directory) whose layers start the Q-Former

    def __post_init__(self) -> None:
        require_positive(self, ("num_query_tokens", "num_layers", "num_heads", "intermediate_size", "cross_attention_every"))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


# BERT layout -> Blip2QFormer layout; LAVIS copies the text FFN into the query FFN the same way.
_BERT_TO_QFORMER = {
    "attention.self.": "attention.attention.",
    "attention.output.": "attention.output.",
    "intermediate.": "intermediate_query.",
    "output.": "output_query.",
}


def bert_to_qformer_state(bert_state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename a BERT-family encoder state dict to Blip2QFormerModel keys (first `num_layers` layers)."""
    out = {"layernorm.weight": bert_state["embeddings.LayerNorm.weight"],
           "layernorm.bias": bert_state["embeddings.LayerNorm.bias"]}
    for key, value in bert_state.items():
        if not key.startswith("encoder.layer."):
            continue
        index, rest = key[len("encoder.layer."):].split(".", 1)
        if int(index) >= num_layers:
            continue
        for src, dst in _BERT_TO_QFORMER.items():
            if rest.startswith(src):
                out[f"encoder.layer.{index}.{dst}{rest[len(src):]}"] = value
                break
    return out


class QFormer(BaseConnector):
    """[B, N, in_dim] -> [B, num_query_tokens, out_dim], whatever N is."""

    config_class = QFormerConfig

    def __init__(self, config: QFormerConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        bert = self._load_bert(config.init_from) if config.init_from else None
        qformer_config = Blip2QFormerConfig(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            cross_attention_frequency=config.cross_attention_every,
            encoder_hidden_size=in_dim,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            # a copied layer keeps the activation and norm epsilon it was trained with
            hidden_act=bert.config.hidden_act if bert is not None else "gelu",
            layer_norm_eps=bert.config.layer_norm_eps if bert is not None else 1e-12,
            initializer_range=config.init_std,
        )
        self.input_norm = nn.LayerNorm(in_dim)  # BLIP-2's ln_vision on the encoder features
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_query_tokens, config.hidden_size) * config.init_std)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.proj = nn.Linear(config.hidden_size, out_dim)  # BLIP-2's language_projection
        if bert is not None:
            mapped = bert_to_qformer_state(bert.state_dict(), config.num_layers)
            missing, unexpected = self.qformer.load_state_dict(mapped, strict=False)
            if unexpected:  # the key mapping produced names the Q-Former does not have: a bug here, not user input
                raise RuntimeError(f"Q-Former init mapping produced unknown keys {unexpected[:3]}")
            logger.info("qformer init_from=%s: copied %d tensors, %d (cross-attention) start random",
                        config.init_from, len(mapped), len(missing))

    def _load_bert(self, name_or_path: str) -> nn.Module:
        """The BERT-family encoder to copy from, after checking that its sizes fit this Q-Former."""
        from transformers import AutoModel

        where = f"connector qformer init_from={name_or_path!r}"
        try:
            bert = AutoModel.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{where}: cannot load it: {e}") from e
        state_keys = set(bert.state_dict())
        if "encoder.layer.0.attention.self.query.weight" not in state_keys or "embeddings.LayerNorm.weight" not in state_keys:
            raise ConfigError(f"{where}: not a BERT-family encoder (no encoder.layer.N.attention.self.* weights)")
        sizes = {"hidden_size": "hidden_size", "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size"}
        wrong = [f"{ours}={getattr(self.config, ours)} (checkpoint: {getattr(bert.config, theirs, None)})"
                 for ours, theirs in sizes.items() if getattr(self.config, ours) != getattr(bert.config, theirs, None)]
        if wrong:
            raise ConfigError(f"{where}: the Q-Former sizes must match the checkpoint: {', '.join(wrong)}")
        available = int(bert.config.num_hidden_layers)
        if self.config.num_layers > available:
            raise ConfigError(f"{where}: num_layers={self.config.num_layers} but the checkpoint has {available} layers")
        return bert

    def num_tokens(self, num_features: int) -> int:
        return self.config.num_query_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1)  # [B, Q, H]
        keys = with_positions(self.input_norm(features), self.config.positions)  # [B, N, in]
        out = self.qformer(query_embeds=queries, encoder_hidden_states=keys)
        return self.proj(out.last_hidden_state.to(self.proj.weight.dtype))  # [B, Q, H] -> [B, Q, out]
