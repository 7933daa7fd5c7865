"""Pure functions on logits and labels shared by every objective."""

from __future__ import annotations

import torch

from mmadapt.data.tokenisation import IGNORE_INDEX


def shifted_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and its mask.

    logits [B, T, V], labels [B, T] (IGNORE_INDEX where unsupervised) -> (logps [B, T-1], mask [B, T-1] bool).
    """
    return target_logps(logits[:, :-1], labels[:, 1:])  # position t predicts token t+1


def target_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p(target) position by position and its mask: logits [B, K, V] score targets [B, K] (already aligned,
    e.g. the positions HF's `logits_to_keep` kept) -> (logps [B, K] zero where masked, mask [B, K] bool)."""
    logits = logits.float()
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    # log_softmax gathered at the target, without materialising a second [B, K, V] tensor
    logps = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # [B, K]
    return logps * mask, mask


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token NLL over supervised positions, number of supervised positions)."""
    logps, mask = shifted_token_logps(logits, labels)
    return -logps.sum(), mask.sum()
