"""Log-probabilities of completions under a model: the one forward every preference objective shares.

Rows that share their prompts (chosen and rejected of a pair; a KTO completion and its mismatched
KL row) arrive concatenated from the collator and go through the LLM in a single forward. Media are
encoded once per prompt: the first group of rows is embedded with its media and every later group
copies those embeddings at the placeholder positions, which sit at the same place because the
prompt tokens are identical.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from mmadapt.data.tokenisation import IGNORE_INDEX
from mmadapt.train.objectives.base import shifted_token_logps, target_logps


@dataclass
class Completions:
    """Per-row summed log-probability of the supervised tokens and how many there were."""

    logps: torch.Tensor  # [N] sum of log p(token) over the completion
    tokens: torch.Tensor  # [N] number of completion tokens

    @classmethod
    def of(cls, token_logps: torch.Tensor, mask: torch.Tensor) -> "Completions":
        """Row sums of per-token log-probs [N, K] (zero where masked) and of their mask."""
        return cls(token_logps.sum(-1), mask.sum(-1))

    @property
    def mean_logps(self) -> torch.Tensor:
        """Length-normalised log-probability (SimPO, ORPO)."""
        return self.logps / self.tokens.clamp(min=1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> Completions:
    """Sum of log p(label) over the supervised positions of each row.

    logits [N, L, V], labels [N, L] aligned with the inputs (HF convention: position t predicts t+1).
    """
    return Completions.of(*shifted_token_logps(logits, labels))


def _causal_lm(model: Any) -> Any:
    """The HF model under DDP/FSDP, mmadapt (.llm, .hf) and peft wrappers (whose forwards pass keyword arguments on)."""
    model = getattr(model, "module", model)
    model = getattr(model, "llm", getattr(model, "hf", model))
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _scored_positions(model: Any, labels: torch.Tensor) -> torch.Tensor | None:
    """Positions whose logits score a supervised token (in any row), for HF's `logits_to_keep`; None: keep all.

    Why: prompt and padding positions are most of a preference row; projecting them through the LM
    head (a [N, L, V] matmul, its logsumexp and their backward) is work whose result is thrown away.
    """
    forward = type(_causal_lm(model)).forward
    if "logits_to_keep" not in inspect.signature(forward).parameters:
        return None
    keep = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)  # [K]: position t predicts token t+1
    return keep if 0 < keep.numel() < labels.shape[1] - 1 else None


def _placeholder_mask(model: Any, input_ids: torch.Tensor, modalities: list[str]) -> torch.Tensor:
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for modality in modalities:
        mask |= input_ids == model.placeholder_id(modality)
    return mask


def group_logps(model: Any, batch: dict[str, Any], groups: int) -> list[Completions]:
    """Completion log-probs of `groups` row groups that share their prompts, in one forward.

    batch["input_ids"] / ["attention_mask"] / ["completion_labels"]: [groups * B, L], right-padded;
    row g*B + i has the same prompt tokens (so the same placeholders) as row i. batch["media"]
    holds the items of the first group's placeholders, in order: they are encoded once.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    rows = input_ids.shape[0]
    if rows % groups:
        raise ValueError(f"{rows} rows do not split into {groups} groups")
    size = rows // groups
    media = batch.get("media")
    labels = batch["completion_labels"]
    keep = _scored_positions(model, labels)
    extra: dict[str, Any] = {"use_cache": False} if keep is None else {"use_cache": False, "logits_to_keep": keep}
    if media and (hasattr(model, "module") or not hasattr(model, "embed")):
        # A DDP / FSDP wrapper syncs gradients only through its own forward, and an HF vision-language model
        # embeds inside its own forward, so no embed() shortcut: every group gets its prompts' media again
        # (encoded once per row instead of once per prompt; every media tensor is per item along dim 0).
        repeated = {m: torch.cat([items] * groups) for m, items in media.items()}
        logits = model(input_ids=input_ids, attention_mask=attention_mask, media=repeated, **extra).logits
    elif media:
        first = model.embed(input_ids[:size], media)  # [B, L, H]: the encoders run once per prompt
        rest = model.llm.get_input_embeddings()(input_ids[size:])  # [(groups-1)*B, L, H]
        at_media = _placeholder_mask(model, input_ids[size:], list(media))  # [(groups-1)*B, L]
        repeated = first.repeat(groups - 1, 1, 1).to(rest.dtype)  # row g*B + i copies prompt i
        rest = torch.where(at_media.unsqueeze(-1), repeated, rest)
        embeds = torch.cat([first, rest.to(first.dtype)])  # [groups*B, L, H]
        logits = model.llm(inputs_embeds=embeds, attention_mask=attention_mask, **extra).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # [groups*B, L or K, V]
    if keep is None:
        result = sequence_logps(logits, labels)
    else:  # logits[:, j] scores token keep[j] + 1
        result = Completions.of(*target_logps(logits, labels[:, keep + 1]))
    return [Completions(result.logps[g * size:(g + 1) * size], result.tokens[g * size:(g + 1) * size])
            for g in range(groups)]


def pair_logps(model: Any, batch: dict[str, Any]) -> tuple[Completions, Completions]:
    """(chosen, rejected) completion log-probs of a preference batch (rows [:B] chosen, [B:] rejected)."""
    chosen, rejected = group_logps(model, batch, groups=2)
    return chosen, rejected


def kto_logps(model: Any, batch: dict[str, Any], with_kl: bool) -> tuple[Completions, Completions | None]:
    """(completion, mismatched-KL-row) log-probs of a KTO batch (rows [:B] completions, [B:] KL rows).

    Without `with_kl` only the first half goes through the model.
    """
    if with_kl:
        completion, kl = group_logps(model, batch, groups=2)
        return completion, kl
    size = batch["input_ids"].shape[0] // 2
    half = {"input_ids": batch["input_ids"][:size], "attention_mask": batch["attention_mask"][:size],
            "completion_labels": batch["completion_labels"][:size], "media": batch.get("media")}
    return group_logps(model, half, groups=1)[0], None
