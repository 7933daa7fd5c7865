"""Per-request sampling and streaming inside one batched HF `generate` call.

`generate` takes one set of sampling options per call, but a batch mixes requests with their own temperature,
top_p, seed, stop strings and max_tokens. So the batch runs greedy, and `RowSampler` (a logits processor) draws
each sampling row's token itself (its own torch.Generator, so `seed` reproduces an answer whatever else is in
the batch) and leaves only that token possible; `RowStopper` (a stopping criterion, called once per decode step
with every row's new token) detokenises, streams each row's new text, applies stop strings and per-row
max_tokens, and ends a row whose client went away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


@dataclass
class RowState:
    """One request's decoding state within a batch."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: Sequence[str]
    generator: torch.Generator
    emit: Callable[[str], None] | None  # receives each new piece of text; None: no streaming
    cancelled: Callable[[], bool]
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the answer so far (stop string cut off)
    emitted: int = 0  # characters of `text` already emitted
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Nucleus sampling by inverse CDF, vectorised over rows: logits [R, V], temperature / top_p / uniforms [R]
    (uniforms in [0, 1), drawn from each row's own generator) -> token ids [R]."""
    probs = torch.softmax(logits.float() / temperature[:, None], dim=-1)  # [R, V]
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [R, V]
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = sorted_probs.masked_fill(before >= top_p[:, None], 0.0)  # outside the nucleus
    cdf = sorted_probs.cumsum(-1)  # [R, V]
    target = (uniforms * cdf[:, -1])[:, None]  # [R, 1]: a point in the kept mass
    position = torch.searchsorted(cdf, target).clamp(max=logits.shape[-1] - 1)  # [R, 1]
    return order.gather(1, position).squeeze(1)  # [R]


class RowSampler:
    """Logits processor: rows with temperature > 0 get a token sampled here; greedy rows pass through."""

    def __init__(self, rows: list[RowState]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        picked = [i for i, row in enumerate(self.rows) if row.temperature > 0 and row.finish_reason is None]
        if not picked:
            return scores
        rows = [self.rows[i] for i in picked]
        index = torch.tensor(picked, device=scores.device)
        uniforms = torch.cat([torch.rand(1, generator=row.generator) for row in rows]).to(scores.device)
        tokens = sample_rows(scores[index], torch.tensor([r.temperature for r in rows], device=scores.device),
                             torch.tensor([r.top_p for r in rows], device=scores.device), uniforms)
        scores[index] = float("-inf")
        scores[index, tokens] = 0.0  # the greedy step now picks exactly the sampled token
        return scores


class RowStopper:
    """Stopping criterion: one new token per row per call; returns which rows are done ([B] bool)."""

    def __init__(self, rows: list[RowState], tokenizer: Any, eos: set[int]) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.eos = eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, -1].tolist()  # [B]: this step's token of every row
        for i, row in enumerate(self.rows):
            if row.finish_reason is None:
                self.step(row, int(new[i]))
            done[i] = row.finish_reason is not None
        return done

    def step(self, row: RowState, token: int) -> None:
        if row.cancelled():
            row.finish_reason = "cancelled"
            return
        if token in self.eos:
            row.finish_reason = "stop"
        else:
            row.tokens.append(token)
            if len(row.tokens) >= row.max_tokens:
                row.finish_reason = "length"
        # detokenise every step only when the text is needed now (streaming, stop strings); else once at the end
        if row.emit is not None or row.stop or row.finish_reason is not None:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = min((p for p in (text.find(s) for s in row.stop) if p >= 0), default=-1)
            if cut >= 0:
                text, row.finish_reason = text[:cut], "stop"
            row.text = text
        self.flush(row)

    def finish(self, row: RowState) -> None:
        """End a row generate left unfinished (it cannot before max_tokens, but never hang a client)."""
        if row.finish_reason is None:
            row.finish_reason = "length"
            row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        self.flush(row)

    def flush(self, row: RowState) -> None:
        """Emit the text not emitted yet, holding back what may still become a stop string or a split character."""
        if row.emit is None:
            return
        ready = len(row.text)
        if row.finish_reason is None:
            hold = max((len(s) - 1 for s in row.stop), default=0)
            ready -= hold
            while ready > 0 and row.text[ready - 1] == "\ufffd":  # a multi-byte character not complete yet
                ready -= 1
        if ready > row.emitted:
            row.emit(row.text[row.emitted:ready])
            row.emitted = ready
