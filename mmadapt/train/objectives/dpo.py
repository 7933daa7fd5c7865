"""DPO (sigmoid, hinge, robust), conservative DPO and IPO: losses on four log-prob tensors, and their objectives.

DPO (Rafailov et al. 2023): with h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)],
    sigmoid:  L = -log sigmoid(beta * h).
Conservative DPO (cDPO, Mitchell 2023; `loss_type: sigmoid` with label_smoothing eps): labels flipped
with probability eps,
    L = -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h).
Robust DPO (rDPO, Chowdhury et al. 2024; `loss_type: robust`): an unbiased estimate of the clean loss,
    L = [-(1 - eps) log sigmoid(beta * h) + eps log sigmoid(-beta * h)] / (1 - 2 eps).
Hinge (SLiC, Zhao et al. 2023; `loss_type: hinge`): L = max(0, 1 - beta * h).
IPO (Azar et al. 2023, eq. 17): L = (h' - 1 / (2 * tau))^2, h' with log-probs averaged over each
completion's tokens by default, as TRL does (`length_normalize: false` sums them, as the paper's notation).
The logged implicit rewards are beta (IPO: tau) * (log pi - log ref) of each completion, summed over its
tokens: TRL's `rewards/chosen` and `rewards/rejected` (tests/train/test_trl_equality.py compares them).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from mmadapt.interfaces import Collator
from mmadapt.train.objectives.logprobs import Completions, pair_logps
from mmadapt.train.objectives.reference import build_reference

DPOLossType = Literal["sigmoid", "robust", "hinge"]
DPO_LOSS_TYPES = ("sigmoid", "robust", "hinge")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: DPOLossType = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO / cDPO / rDPO / hinge losses and the chosen / rejected implicit rewards; inputs are [B] summed
    log-probs. TRL's `loss_type` values of the same names give the same numbers."""
    chosen_ratio = policy_chosen - ref_chosen  # [B] log pi/ref of y_w
    rejected_ratio = policy_rejected - ref_rejected  # [B] log pi/ref of y_l
    logits = beta * (chosen_ratio - rejected_ratio)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - logits)
    else:
        raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSS_TYPES)}, got {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    tau: float = 0.1,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair IPO losses (h - 1/(2 tau))^2 and the implicit rewards tau * summed log-ratio; inputs [B] summed log-probs.

    With the completions' token counts, h compares token-mean log-ratios (TRL's IPO); without, summed ones."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h_chosen, h_rejected = chosen_ratio, rejected_ratio
    if chosen_tokens is not None and rejected_tokens is not None:
        h_chosen = chosen_ratio / chosen_tokens.clamp(min=1)
        h_rejected = rejected_ratio / rejected_tokens.clamp(min=1)
    losses = (h_chosen - h_rejected - 1.0 / (2.0 * tau)) ** 2
    return losses, tau * chosen_ratio.detach(), tau * rejected_ratio.detach()


def preference_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen: Completions, rejected: Completions
) -> dict[str, float]:
    """The metrics every pairwise objective logs: rewards, margin, preference accuracy, log-probs."""
    return {
        "rewards_chosen": chosen_rewards.mean().item(),
        "rewards_rejected": rejected_rewards.mean().item(),
        "rewards_margin": (chosen_rewards - rejected_rewards).mean().item(),
        "preference_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps_chosen": chosen.logps.detach().mean().item(),
        "logps_rejected": rejected.logps.detach().mean().item(),
    }


def chosen_nll(chosen: Completions) -> torch.Tensor:
    """Token-averaged negative log-likelihood of the chosen completions (the SFT term of RPO / ORPO)."""
    return -chosen.logps.sum() / chosen.tokens.sum().clamp(min=1)


ReferenceStrategy = Literal["auto", "copy", "adapters_off", "precomputed"]


@dataclass
class DPOConfig:
    beta: float = 0.1  # strength of the KL tie to the reference
    label_smoothing: float = 0.0  # probability that a preference label is flipped, in [0, 0.5): cDPO or rDPO
    loss_type: DPOLossType = "sigmoid"  # sigmoid (DPO; cDPO with label_smoothing) | robust (rDPO) | hinge (SLiC)
    reference: ReferenceStrategy = "auto"
    sft_weight: float = 0.0  # RPO (Pang et al. 2024): + weight * token-mean NLL of the chosen completion

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSS_TYPES)}, got {self.loss_type!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "hinge" and self.label_smoothing:
            raise ValueError("label_smoothing has no effect with loss_type hinge (as in TRL); use sigmoid or robust")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")


@dataclass
class IPOConfig:
    tau: float = 0.1  # the margin target is 1 / (2 tau)
    reference: ReferenceStrategy = "auto"
    length_normalize: bool = True  # token-mean log-probs, as TRL (and the IPO authors' results); false: sums

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")


def _pair_sums(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = pair_logps(model, batch)
    return chosen.logps, rejected.logps


class PairObjective:
    """What every objective on preference pairs shares: its data format and its config."""

    data_formats = ("preference",)

    def __init__(self, config: Any) -> None:
        self.config = config


def add_chosen_nll(loss: torch.Tensor, metrics: dict[str, float], chosen: Completions, weight: float) -> torch.Tensor:
    """`loss + weight * NLL(chosen)` (RPO's SFT term; nothing when weight is 0), logging the NLL as `nll_chosen`."""
    if weight <= 0:
        return loss
    nll = chosen_nll(chosen)
    metrics["nll_chosen"] = nll.item()
    return loss + weight * nll


class _ReferencedPairObjective(PairObjective, abc.ABC):
    """Pairwise objectives that compare against a reference model: `pair_losses` is each one's math."""

    sft_weight = 0.0  # weight of the chosen completion's NLL added to the loss (RPO)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.reference: Any = None

    def prepare(self, model: torch.nn.Module, records: list[Any] | None = None, collator: Collator | None = None) -> None:
        """Build the reference (a copy, adapters off, or log-probs precomputed over `records` batched by the run's
        `collator`)."""
        self.reference = build_reference(self.config.reference, model, _pair_sums, records, collator)

    def policy_and_reference(self, model: torch.nn.Module, batch: dict[str, Any]
                             ) -> tuple[Completions, Completions, torch.Tensor, torch.Tensor]:
        """(chosen, rejected) under the policy, then their summed log-probs under the reference."""
        chosen, rejected = pair_logps(model, batch)
        if self.reference is None:  # not prepared: the model right now (before the first update) is the reference
            self.prepare(model)
        ref_chosen, ref_rejected = self.reference(model, batch, _pair_sums)
        return chosen, rejected, ref_chosen, ref_rejected

    @abc.abstractmethod
    def pair_losses(self, chosen: Completions, rejected: Completions, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-pair losses [B], chosen rewards [B], rejected rewards [B]) from policy and reference log-probs."""

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, ref_chosen, ref_rejected = self.policy_and_reference(model, batch)
        losses, chosen_rewards, rejected_rewards = self.pair_losses(chosen, rejected, ref_chosen, ref_rejected)
        metrics = preference_metrics(chosen_rewards, rejected_rewards, chosen, rejected)
        return add_chosen_nll(losses.mean(), metrics, chosen, self.sft_weight), metrics


class DPOObjective(_ReferencedPairObjective):
    """DPO: sigmoid loss (label_smoothing > 0: conservative DPO), robust (rDPO) or hinge, chosen by `loss_type`."""

    config_class = DPOConfig

    @property
    def sft_weight(self) -> float:
        return self.config.sft_weight

    def pair_losses(self, chosen: Completions, rejected: Completions, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return dpo_loss(chosen.logps, rejected.logps, ref_chosen, ref_rejected, self.config.beta,
                        self.config.label_smoothing, self.config.loss_type)


class IPOObjective(_ReferencedPairObjective):
    """IPO: a squared loss pulling the log-ratio margin to 1 / (2 tau)."""

    config_class = IPOConfig

    def pair_losses(self, chosen: Completions, rejected: Completions, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the same token counts normalise policy and reference; the logged rewards stay summed (as TRL's)
        tokens = (chosen.tokens, rejected.tokens) if self.config.length_normalize else (None, None)
        return ipo_loss(chosen.logps, rejected.logps, ref_chosen, ref_rejected, self.config.tau, *tokens)
