"""Tokenisation for editing: where the subject's last token and the target tokens are, by character offsets.

Offsets (fast tokenizers) locate tokens exactly whatever the tokenizer does with spaces or BOS;
slow tokenizers fall back to tokenising prefixes (ROME's method).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmadapt.errors import DataError


@dataclass
class Encoded:
    """One tokenised prompt (+ target): ids, the subject's last token index, the target tokens' indices."""

    input_ids: list[int]
    subject_last: int
    target_positions: list[int]
    subject_first: int = -1


def separator(text: str, target: str) -> str:
    return "" if not text or text[-1].isspace() or target[:1].isspace() else " "


def encode(tok, text: str, subject_span: tuple[int, int] | None = None, target: str | None = None, where: str = "") -> Encoded:
    """Tokenise `text` (+ " " + `target`); `subject_span` is the subject's [start, end) character range in `text`."""
    full = text + separator(text, target) + target if target else text
    if getattr(tok, "is_fast", False):
        enc = tok(full, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        subject_first = subject_last = -1
        if subject_span is not None:
            start, end = subject_span
            overlapping = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
            if not overlapping:
                raise DataError(f"{where}: the subject at characters {start}:{end} of {text!r} maps to no token")
            subject_first, subject_last = overlapping[0], overlapping[-1]
        targets = [i for i, (a, b) in enumerate(offsets) if b > a and b > len(text)] if target else []
    else:
        ids = list(tok(full)["input_ids"])
        subject_last = len(tok(text[: subject_span[1]])["input_ids"]) - 1 if subject_span is not None else -1
        subject_first = min(len(tok(text[: subject_span[0]])["input_ids"]), subject_last) if subject_span is not None else -1
        n_prompt = len(tok(text)["input_ids"])
        targets = list(range(n_prompt, len(ids))) if target else []
    if target and (not targets or targets[0] == 0):
        raise DataError(f"{where}: target {target!r} after {text!r} gives no token to predict")
    if subject_span is not None and subject_last >= (targets[0] if targets else len(ids)):
        raise DataError(f"{where}: the subject must come before the target in {text!r}")
    return Encoded(ids, subject_last, targets, subject_first)


def subject_span(text: str, subject: str, where: str = "") -> tuple[int, int]:
    start = text.find(subject)
    if start < 0:
        raise DataError(f"{where}: {text!r} does not contain the subject {subject!r}")
    return start, start + len(subject)


def render(prefix: str, template: str, subject: str) -> tuple[str, tuple[int, int]]:
    """`prefix + template.format(subject)` and the subject's character span in it."""
    start = len(prefix) + template.index("{}")
    return prefix + template.format(subject), (start, start + len(subject))


def pad(batch: list[Encoded], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to [B, T] input_ids and attention_mask (positions of real tokens are unchanged)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tok) -> int:
    for value in (tok.pad_token_id, tok.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def target_logprobs(logits: torch.Tensor, batch: list[Encoded], input_ids: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of each row's target tokens: logits[B, T, V] -> [B] (the token at t is predicted at t-1)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    rows = torch.tensor([i for i, e in enumerate(batch) for _ in e.target_positions], device=logits.device)
    cols = torch.tensor([t for e in batch for t in e.target_positions], device=logits.device)
    token_lp = logp[rows, cols - 1, input_ids[rows, cols]]  # [total target tokens]
    counts = torch.tensor([len(e.target_positions) for e in batch], device=logits.device, dtype=logp.dtype)
    sums = torch.zeros(len(batch), device=logits.device, dtype=logp.dtype).index_add(0, rows, token_lp)
    return sums / counts


@torch.no_grad()
def score_targets(model: nn.Module, tok, items: list[tuple[str, str]], batch_size: int = 32) -> torch.Tensor:
    """Mean target-token log-probability of each (prompt text, target) pair: [len(items)]."""
    device = device_of(model)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = [encode(tok, text, None, target) for text, target in items[start : start + batch_size]]
        ids, mask = pad(chunk, pad_id(tok), device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        out.append(target_logprobs(logits, chunk, ids).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def greedy(model: nn.Module, tok, text: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation ids of one prompt (one prompt at a time: no left-padding subtleties)."""
    device = device_of(model)
    ids = torch.tensor([tok(text)["input_ids"]], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_id(tok))
    return out[0, ids.shape[1]:].tolist()
