"""CounterFact-style evaluation: efficacy, paraphrase generalisation, neighbourhood specificity, fluency.

- efficacy: on the edit prompt, the new target is more probable than the old one;
- paraphrase: the same on the request's paraphrase prompts;
- neighborhood: on other subjects' prompts, their own answer stays more probable than the new target;
- fluency: weighted bi-/tri-gram entropy of greedy generations (ROME's measure; lower = repetitive), each
  `max_new_tokens` long, special tokens (end of sequence) suppressed so that texts are long enough to measure.
Probabilities compare mean per-token log-probabilities, so targets of different lengths are fair.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import torch
from torch import nn

from mmadapt.editing.requests import EditRequest
from mmadapt.editing.tokens import device_of, encode, greedy, pad_id, score_targets
from mmadapt.errors import DataError

METRICS = ("efficacy", "paraphrase", "neighborhood", "fluency")


class WeakEditError(RuntimeError):
    """Some edits did not take (see `edit_outcomes`); the CLI exits 1 unless --allow-weak."""


def ngram_entropy(words: list[str], ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """Mean over n of weight_n * entropy (bits) of the n-gram distribution of `words`."""
    values = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(weight * entropy)
    return sum(values) / len(values)


def _answer(model: nn.Module, tok, text: str, like: str) -> str:
    """The model's greedy continuation of `text`, as many tokens long as `like` is."""
    n = len(encode(tok, text, None, like).target_positions)
    return tok.decode(greedy(model, tok, text, n), skip_special_tokens=True).strip()


@torch.no_grad()
def generation(model: nn.Module, tok, prompt: str, max_new_tokens: int = 20) -> str:
    """`prompt` and its greedy continuation of exactly `max_new_tokens` words-or-pieces, special tokens suppressed.

    Why suppressed: a model that answers one word then ends (as fact-trained models do) leaves a text
    whose n-grams are all distinct, whose entropy is a function of its length alone; every edit,
    good or degenerate, then scores the unedited model's fluency exactly (the quickstart's 2.107 for
    six words). ROME's measure assumes long texts (its generate_fast writes 100 tokens).
    """
    ids = torch.tensor([tok(prompt)["input_ids"]], device=device_of(model))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_id(tok), eos_token_id=None,
                         suppress_tokens=sorted(set(tok.all_special_ids)))
    return prompt + " " + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def fill_missing_targets(model: nn.Module, tok, requests: list[EditRequest]) -> list[EditRequest]:
    """Copies of `requests` whose missing old answers (target_true, neighbours' targets) are the model's own.

    Run it on the unedited model: "the old answer" is then what the deployed model said.
    """
    filled = []
    for request in requests:
        true = request.target_true or _answer(model, tok, request.text, request.target_new)
        if true.strip() == request.target_new.strip():
            raise DataError(f"{request.where}: the model already answers {request.target_new!r}; nothing to edit")
        neighborhood = [(p, t if t is not None else _answer(model, tok, p, request.target_new)) for p, t in request.neighborhood]
        filled.append(dataclasses.replace(request, target_true=true, neighborhood=neighborhood))
    return filled


def evaluate(model: nn.Module, tok, requests: list[EditRequest], batch_size: int = 32,
             max_new_tokens: int = 20) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(aggregate metrics, one dict per request). Requests need target_true (see `fill_missing_targets`)."""
    items: list[tuple[str, str]] = []
    layout = []  # per request: (index of the first pair, n paraphrases, n neighbours)
    for request in requests:
        if request.target_true is None:
            raise DataError(f"{request.where}: no target_true to compare with; give one, or fill it from the base model")
        first = len(items)
        items += [(request.text, request.target_new), (request.text, request.target_true)]
        for prompt in request.paraphrase_prompts:
            items += [(prompt, request.target_new), (prompt, request.target_true)]
        for prompt, answer in request.neighborhood:
            items += [(prompt, request.target_new), (prompt, answer if answer is not None else request.target_true)]
        layout.append((first, len(request.paraphrase_prompts), len(request.neighborhood)))
    scores = score_targets(model, tok, items, batch_size).tolist()

    per_request = []
    for request, (first, n_para, n_neigh) in zip(requests, layout):
        new_wins = [scores[first + 2 * j] > scores[first + 2 * j + 1] for j in range(1 + n_para + n_neigh)]
        row = {"efficacy": float(new_wins[0]), "target_new_logprob": scores[first], "target_true_logprob": scores[first + 1]}
        if n_para:
            row["paraphrase"] = sum(new_wins[1 : 1 + n_para]) / n_para
        if n_neigh:
            row["neighborhood"] = sum(not w for w in new_wins[1 + n_para :]) / n_neigh
        prompts = request.generation_prompts or [request.text]
        texts = [generation(model, tok, prompt, max_new_tokens) for prompt in prompts]
        row["fluency"] = sum(ngram_entropy(t.lower().split()) for t in texts) / len(texts)
        per_request.append(row)

    metrics: dict[str, float] = {"n_requests": float(len(requests))}
    for key in METRICS:
        values = [row[key] for row in per_request if key in row]
        if values:
            metrics[key] = sum(values) / len(values)
    return metrics, per_request


def edit_outcomes(before: list[dict[str, float]], after: list[dict[str, float]],
                  min_gain: float = 0.5) -> list[dict[str, float | str]]:
    """Per request (rows of `evaluate` before and after an edit): whether the edit took.

    "failed": the new target's mean log-probability rose by less than `min_gain` nats (the edit did
    not move it); "weak": it moved but the old answer is still more probable; "ok" otherwise.
    """
    outcomes: list[dict[str, float | str]] = []
    for b, a in zip(before, after, strict=True):
        gain = a["target_new_logprob"] - b["target_new_logprob"]
        status = "failed" if gain < min_gain else "weak" if a["efficacy"] < 1.0 else "ok"
        outcomes.append({"status": status, "logprob_gain": gain, "target_new_logprob_before": b["target_new_logprob"],
                         "target_new_logprob_after": a["target_new_logprob"]})
    return outcomes


def describe_weak(requests: list[EditRequest], outcomes: list[dict[str, float | str]], layers: list[int],
                  layer_choice: dict | None = None) -> str:
    """A message naming every edit that did not take, with its numbers and what to try."""
    lines = [f"{sum(o['status'] != 'ok' for o in outcomes)} of {len(outcomes)} edit(s) did not take:"]
    for request, o in zip(requests, outcomes):
        if o["status"] != "ok":
            lines.append(f"  {request.where}: {request.subject!r} -> {request.target_new!r}: {o['status']}, mean target "
                         f"log-prob {o['target_new_logprob_before']:.3f} -> {o['target_new_logprob_after']:.3f}"
                         + ("" if o["status"] == "failed" else f" (still below {request.target_true!r})"))
    source = (layer_choice or {}).get("source", "hparams")
    effects = (layer_choice or {}).get("trace_effects")
    lines.append(f"edited layer(s) {layers}, chosen by {source}"
                 + (f" (causal-trace effects per layer: {', '.join(f'{e:.3f}' for e in effects)})" if effects else ""))
    if any(o["status"] == "failed" for o in outcomes):
        lines.append("A target that does not move: a model that does not recall the old fact from the subject (e.g. an "
                     "LLM never trained: training.train_modules without 'llm') gives an edit nothing to rewrite.")
    lines.append("Try other layers (--set layer=N for ROME / FT-L, --set 'layers=[...]' for MEMIT; `mmadapt edit trace` "
                 "shows where the fact lives), more v_steps, a larger clamp_norm_factor or (MEMIT) a smaller "
                 "mom2_update_weight; or pass --allow-weak to keep the edit (its record then says status: weak).")
    return "\n".join(lines)


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = (*METRICS, "seconds_per_edit")) -> str:
    """A plain-text table: one row per method, one column per metric ('-' where not measured)."""
    header = ["method", *columns]
    lines = [[name, *(f"{row[c]:.3f}" if c in row else "-" for c in columns)] for name, row in rows.items()]
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in lines)])
