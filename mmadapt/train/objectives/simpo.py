"""SimPO (Meng et al. 2024): reference-free, length-normalised DPO with a target reward margin.

    L = -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)

The implicit reward of a completion is beta times its token-mean log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmadapt.train.objectives.dpo import PairObjective, add_chosen_nll, preference_metrics
from mmadapt.train.objectives.logprobs import pair_logps


def simpo_loss(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float = 2.0, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair SimPO losses and the chosen / rejected rewards; inputs are [B] token-mean log-probs."""
    chosen_rewards = beta * chosen_mean_logps
    rejected_rewards = beta * rejected_mean_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


@dataclass
class SimPOConfig:
    beta: float = 2.0  # reward scale
    gamma: float = 1.0  # target reward margin (the paper tunes gamma / beta in about 0.3 - 0.8)
    sft_weight: float = 0.0  # + weight * token-mean NLL of the chosen completion

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")


class SimPOObjective(PairObjective):
    """SimPO: no reference model, so no `prepare`."""

    config_class = SimPOConfig

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_logps(model, batch)
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            chosen.mean_logps, rejected.mean_logps, self.config.beta, self.config.gamma
        )
        metrics = preference_metrics(chosen_rewards, rejected_rewards, chosen, rejected)
        return add_chosen_nll(losses.mean(), metrics, chosen, self.config.sft_weight), metrics
