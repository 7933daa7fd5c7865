"""Log-probabilities of completions under a model: the one forward every preference objective shares.

Rows that share their prompts (chosen and rejected of a pair; a KTO completion and its mismatched
KL row) go through the LLM in a single concatenated forward. Media are encoded once per prompt:
the first group of rows is embedded with its media and every later group copies those embeddings
at the placeholder positions, which sit at the same place because the prompt tokens are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class Completions:
    """Per-row summed log-probability of the supervised tokens and how many there were."""

    logps: torch.Tensor  # [N] sum of log p(token) over the completion
    tokens: torch.Tensor  # [N] number of completion tokens

    @property
    def mean_logps(self) -> torch.Tensor:
        """Length-normalised log-probability (SimPO, ORPO)."""
        return self.logps / self.tokens.clamp(min=1)

    def detach(self) -> "Completions":
        return Completions(self.logps.detach(), self.tokens)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> Completions:
    """Sum of log p(label) over the supervised positions of each row.

    logits [N, L, V], labels [N, L] aligned with the inputs (HF convention: position t predicts t+1).
    """
    logits = logits[:, :-1].float()  # [N, L-1, V]: position t scores token t+1
    labels = labels[:, 1:]  # [N, L-1]
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    # log_softmax gathered at the label, without materialising a second [N, L-1, V] tensor
    token_logps = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # [N, L-1]
    return Completions((token_logps * mask).sum(-1), mask.sum(-1))


def pad_to(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """Right-pad [N, L] to [N, length]."""
    return F.pad(tensor, (0, length - tensor.shape[1]), value=value)


def _pad_id(model: Any) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _placeholder_mask(model: Any, input_ids: torch.Tensor, modalities: list[str]) -> torch.Tensor:
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for modality in modalities:
        mask |= input_ids == model.placeholder_id(modality)
    return mask


def group_logps(
    model: Any,
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    media: dict[str, torch.Tensor] | None = None,
) -> list[Completions]:
    """Completion log-probs of several groups of rows that share their prompts, in one forward.

    `groups`: [(input_ids [B, L_g], attention_mask [B, L_g], labels [B, L_g]), ...], row i of every
    group has the same prompt tokens (and so the same placeholders) as row i of the first group.
    `media` belongs to the first group's placeholders, in order; it is encoded once.
    """
    batch = groups[0][0].shape[0]
    length = max(ids.shape[1] for ids, _, _ in groups)
    pad = _pad_id(model)
    input_ids = torch.cat([pad_to(ids, length, pad) for ids, _, _ in groups])  # [k*B, L]
    attention_mask = torch.cat([pad_to(mask, length, 0) for _, mask, _ in groups])  # [k*B, L]
    labels = torch.cat([pad_to(lab, length, IGNORE_INDEX) for _, _, lab in groups])  # [k*B, L]
    if media:
        first = model.embed(input_ids[:batch], media)  # [B, L, H], the encoders run once
        rest = model.llm.get_input_embeddings()(input_ids[batch:])  # [(k-1)*B, L, H]
        at_media = _placeholder_mask(model, input_ids[batch:], list(media))  # [(k-1)*B, L]
        repeated = first.repeat(len(groups) - 1, 1, 1)  # [(k-1)*B, L, H], row i*B+j copies prompt j
        rest = torch.where(at_media.unsqueeze(-1), repeated.to(rest.dtype), rest)
        embeds = torch.cat([first, rest.to(first.dtype)])  # [k*B, L, H]
        logits = model.llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [k*B, L, V]
    result = sequence_logps(logits, labels)
    return [
        Completions(result.logps[i * batch : (i + 1) * batch], result.tokens[i * batch : (i + 1) * batch])
        for i in range(len(groups))
    ]


def pair_logps(model: Any, batch: dict[str, Any]) -> tuple[Completions, Completions]:
    """(chosen, rejected) completion log-probs of a preference batch, one forward, media encoded once per pair."""
    chosen, rejected = group_logps(
        model,
        [
            (batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"]),
            (batch["rejected_input_ids"], batch["rejected_attention_mask"], batch["rejected_labels"]),
        ],
        batch.get("media"),
    )
    return chosen, rejected


def kto_logps(model: Any, batch: dict[str, Any], with_kl: bool) -> tuple[Completions, Completions | None]:
    """(completion, mismatched-KL-row) log-probs of a KTO batch; the KL rows only when `with_kl`."""
    groups = [(batch["input_ids"], batch["attention_mask"], batch["labels"])]
    if with_kl:
        groups.append((batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]))
    result = group_logps(model, groups, batch.get("media"))
    return result[0], (result[1] if with_kl else None)
