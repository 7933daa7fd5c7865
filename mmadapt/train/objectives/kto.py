"""KTO (Ethayarajh et al. 2024): alignment from unpaired desirable / undesirable completions.

    r(x, y) = log pi(y|x) - log ref(y|x)
    z0 = max(0, mean over mismatched pairs (x_i, y_j) of r(x_i, y_j))   (a batch estimate of KL(pi || ref), no gradient)
    L = lambda_D * (1 - sigmoid(beta * (r - z0)))   for a desirable y
        lambda_U * (1 - sigmoid(beta * (z0 - r)))   for an undesirable y
averaged over the batch. Each sample's mismatched completion is fixed when the data is read, so a
precomputed reference can cache it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmadapt.interfaces import Collator
from mmadapt.train.objectives.dpo import ReferenceStrategy
from mmadapt.train.objectives.logprobs import kto_logps
from mmadapt.train.objectives.reference import build_reference


def kto_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z0: the clamped, detached mean log-ratio of the mismatched rows [B] -> scalar."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample KTO losses [B] and implicit rewards beta * r [B]; `desirable` is a bool [B]."""
    ratio = policy_logps - ref_logps  # [B]
    kl = torch.as_tensor(kl, dtype=ratio.dtype, device=ratio.device)
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))),
    )
    return losses, beta * ratio.detach()


@dataclass
class KTOConfig:
    beta: float = 0.1
    desirable_weight: float = 1.0  # lambda_D; the paper keeps lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]
    undesirable_weight: float = 1.0  # lambda_U
    kl_estimate: bool = True  # False: z0 = 0, no mismatched forward (cheaper, the paper's ablation)
    reference: ReferenceStrategy = "auto"

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ValueError("desirable_weight and undesirable_weight must be > 0")


class KTOObjective:
    """KTO on `{prompt, completion, label}` data (data.format: kto)."""

    config_class = KTOConfig
    data_formats = ("kto",)

    def __init__(self, config: KTOConfig) -> None:
        self.config = config
        self.reference: Any = None

    def _sums(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        completion, kl = kto_logps(model, batch, with_kl=self.config.kl_estimate)
        return (completion.logps,) if kl is None else (completion.logps, kl.logps)

    def prepare(self, model: torch.nn.Module, records: list[Any] | None = None, collator: Collator | None = None) -> None:
        """Build the reference (a copy, adapters off, or log-probs precomputed over `records` batched by the run's
        `collator`)."""
        self.reference = build_reference(self.config.reference, model, self._sums, records, collator)

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        completion, kl_rows = kto_logps(model, batch, with_kl=self.config.kl_estimate)
        if self.reference is None:  # not prepared: the model right now (before the first update) is the reference
            self.prepare(model)
        ref = self.reference(model, batch, self._sums)
        kl = kto_kl(kl_rows.logps.detach(), ref[1]) if kl_rows is not None else torch.zeros(())
        desirable = batch["desirable"].bool()
        losses, rewards = kto_loss(
            completion.logps, ref[0], desirable, kl,
            self.config.beta, self.config.desirable_weight, self.config.undesirable_weight,
        )
        metrics = {"kl": kl.item()}
        logps = completion.logps.detach()
        if desirable.any():
            metrics.update(rewards_chosen=rewards[desirable].mean().item(), logps_chosen=logps[desirable].mean().item())
        if (~desirable).any():
            metrics.update(rewards_rejected=rewards[~desirable].mean().item(),
                           logps_rejected=logps[~desirable].mean().item())
        if desirable.any() and (~desirable).any():
            metrics["rewards_margin"] = metrics["rewards_chosen"] - metrics["rewards_rejected"]
        return losses.mean(), metrics
