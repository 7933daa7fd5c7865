"""ORPO (Hong et al. 2024): SFT on the chosen completion plus an odds-ratio preference term, no reference model.

    odds(y) = P(y) / (1 - P(y)),  P(y) = exp(token-mean log pi(y|x))
    L = NLL(y_w) - lambda * log sigmoid(log odds(y_w) - log odds(y_l))

`beta` is the paper's lambda (TRL's name for it); the implicit rewards are beta * token-mean log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmadapt.train.objectives.dpo import PairObjective, chosen_nll, preference_metrics
from mmadapt.train.objectives.logprobs import pair_logps


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    x = x.clamp(max=-1e-7)  # P(y) == 1 would make the odds infinite
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log(P / (1 - P)) from log P."""
    return mean_logps - log1mexp(mean_logps)


def orpo_loss(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, nll: torch.Tensor, beta: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ORPO loss (scalar) and the per-pair log odds ratios [B]; `nll` is the chosen SFT loss (scalar)."""
    ratio = log_odds(chosen_mean_logps) - log_odds(rejected_mean_logps)  # [B]
    return nll - beta * F.logsigmoid(ratio).mean(), ratio.detach()


@dataclass
class ORPOConfig:
    beta: float = 0.1  # lambda: weight of the odds-ratio term

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


class ORPOObjective(PairObjective):
    """ORPO: one loss doing SFT and preference alignment at once."""

    config_class = ORPOConfig

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_logps(model, batch)
        nll = chosen_nll(chosen)
        loss, ratio = orpo_loss(chosen.mean_logps, rejected.mean_logps, nll, self.config.beta)
        beta = self.config.beta
        chosen_rewards, rejected_rewards = beta * chosen.mean_logps.detach(), beta * rejected.mean_logps.detach()
        metrics = preference_metrics(chosen_rewards, rejected_rewards, chosen, rejected)
        metrics.update(nll_chosen=nll.item(), log_odds_ratio=ratio.mean().item())
        return loss, metrics
