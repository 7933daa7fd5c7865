"""Supervised fine-tuning: token NLL on the supervised (assistant) tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmadapt.train.objectives.base import summed_nll


@dataclass
class SFTConfig:
    pass


class SFTObjective:
    config_class = SFTConfig
    data_formats = ("conversations", "text")

    def __init__(self, config: SFTConfig) -> None:
        self.config = config

    def loss(self, model: torch.nn.Module, batch: dict[str, Any],
             num_items_in_batch: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        # A packed batch (data.packing) has position ids that restart per sample and no attention mask: transformers
        # then keeps attention inside each sample (no cache, or it would not look at the position ids).
        packed = {"position_ids": batch["position_ids"], "use_cache": False} if "position_ids" in batch else {}
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), media=batch.get("media"),
                        **packed)
        nll_sum, count = summed_nll(outputs.logits, batch["labels"])
        # Dividing by the count over the whole accumulation window (and all processes) makes
        # 1 process x 2 accumulation steps and 2 processes x 1 step the same update.
        denominator = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        loss = nll_sum / denominator
        return loss, {"nll": float(nll_sum.detach() / count.clamp(min=1)), "supervised_tokens": float(count)}
