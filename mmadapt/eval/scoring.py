"""Batched model calls for evaluation: load any checkpoint, log-likelihood of continuations, greedy generation.

Log-likelihood follows lm-evaluation-harness exactly for raw text (context/continuation split, no special
tokens, the last context token predicts the first continuation token), so the lm_eval adapter and
`mmadapt eval` give the same numbers as lm-eval's own `hf` model on a plain checkpoint. Requests are sorted
by length and right-padded into batches: the padding never changes a request's result (causal attention,
positions counted from the left).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmadapt.errors import ConfigError, DataError


@dataclass
class LLRequest:
    """One continuation to score: `context` is raw text, or chat messages when `messages` is set."""

    context: str
    continuation: str
    messages: list[dict[str, str]] | None = None
    media: dict[str, list[Any]] = field(default_factory=dict)


def load_eval_model(directory: str | Path, trust_remote_code: bool = False) -> Any:
    """Any mmadapt checkpoint (composed or HF VLM), or a plain HF causal-LM directory, in eval mode."""
    from mmadapt.factory import checkpoint_format, load_model

    directory = Path(directory)
    if checkpoint_format(directory, f"--model {directory}") != "hf":
        return load_model(directory, trust_remote_code=trust_remote_code).eval()
    from mmadapt.config import LLMConfig, ModelConfig
    from mmadapt.model import MultimodalLM

    config = ModelConfig(llm=LLMConfig(name_or_path=str(directory), trust_remote_code=trust_remote_code))
    return MultimodalLM.from_config(config).eval()  # a text LM is a MultimodalLM with no encoders


def model_hash(directory: str | Path) -> str:
    """SHA-256 identifying a model's weights: from its manifest's recorded hashes (verified at load), else hashed."""
    from mmadapt.lineage import hash_files, read_manifest

    manifest = read_manifest(directory)
    files = manifest.get("files") if manifest else None
    if not files:
        files = hash_files(directory)
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation; the whole string is tokenised once
    and the continuation is what follows the context's own tokens (so merges across the seam count)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    if not context:  # nothing to condition on: start from the BOS (or EOS) token, as lm-eval does
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return [prefix], tok(continuation, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def _encode(model: Any, request: LLRequest) -> tuple[list[int], list[int]]:
    tok = model.tokenizer
    if request.messages is None:
        if request.media:
            raise DataError("media needs a chat prompt (messages), not raw text")
        return encode_pair(tok, request.context, request.continuation)
    from mmadapt.generate import encode_prompt

    # the chat template ends with the assistant's opening: the answer's tokens follow it directly
    return encode_prompt(model, request.messages, request.media), tok(request.continuation, add_special_tokens=False)["input_ids"]


def _media_batch(model: Any, media: list[dict[str, list[Any]]]) -> dict[str, torch.Tensor] | None:
    """Every item preprocessed by its encoder, stacked per modality in placeholder (batch row) order."""
    stacks: dict[str, list[torch.Tensor]] = {}
    for row in media:
        for modality, items in row.items():
            stacks.setdefault(modality, []).extend(model.encoders[modality].preprocess(i) for i in items)
    return {m: torch.stack(t) for m, t in stacks.items()} or None


@torch.no_grad()
def loglikelihood(model: Any, requests: list[LLRequest], batch_size: int = 16, desc: str = "log-likelihood",
                  max_length: int | None = None) -> list[tuple[float, int, bool]]:
    """Per request: (sum of continuation log-probabilities, continuation tokens, all tokens greedy).

    `batch_size=1` is the one-at-a-time loop (the benchmark's reference)."""
    if getattr(model, "processor", None) is not None:
        raise ConfigError("log-likelihood scoring needs a composed mmadapt model or a text LM, "
                          "not an HF vision-language model (use short_answer / generation tasks)")
    encoded = [_encode(model, r) for r in requests]
    for request, (_, cont) in zip(requests, encoded):
        if not cont:
            raise DataError(f"the continuation {request.continuation!r} tokenises to nothing")
    limit = max_length or getattr(model.llm.config, "max_position_embeddings", None) or 10**9
    return score_tokens(model, encoded, [r.media for r in requests], batch_size, limit, desc)


def score_tokens(model: Any, pairs: list[tuple[list[int], list[int]]], media: list[dict[str, list[Any]]] | None,
                 batch_size: int, limit: int, desc: str = "log-likelihood") -> list[tuple[float, int, bool]]:
    """(sum log-probability, tokens, all greedy) of each (context ids, continuation ids), in length-sorted
    right-padded batches; the input is context + continuation minus its last token, cut from the left to `limit`."""
    model.eval()
    inputs = [(ctx + cont)[-(limit + 1):][:-1] for ctx, cont in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))  # longest first: padding stays small
    results: list[tuple[float, int, bool] | None] = [None] * len(pairs)
    pad_id = model.tokenizer.pad_token_id or 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=len(order) < 2 * batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(inputs[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # [B, T], right padded
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, :len(inputs[i])] = torch.tensor(inputs[i])
            mask[row, :len(inputs[i])] = 1
        batch_media = _media_batch(model, [media[i] for i in chunk]) if media else None
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), media=batch_media).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()  # [B, T, V]
        for row, i in enumerate(chunk):
            cont = torch.tensor(pairs[i][1])
            end = len(inputs[i])
            rows = logprobs[row, end - len(cont):end]  # [C, V]: the positions that predict the continuation
            picked = rows.gather(-1, cont.unsqueeze(-1)).squeeze(-1)
            results[i] = (float(picked.sum()), len(cont), bool((rows.argmax(-1) == cont).all()))
    return results  # type: ignore[return-value]


@torch.no_grad()
def rolling_loglikelihood(model: Any, texts: list[str], batch_size: int = 16,
                          max_length: int | None = None) -> list[tuple[float, int]]:
    """(sum log-probability, tokens) of whole texts, each token predicted from all before it (windows of
    `max_length` when a text is longer, each conditioned on what fits before it; the first token from BOS/EOS):
    lm-eval's rolling log-likelihood."""
    tok = model.tokenizer
    limit = max_length or getattr(model.llm.config, "max_position_embeddings", None) or 1024
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pairs, owners = [], []
    for n, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise DataError(f"text {n} tokenises to nothing")
        for start in range(0, len(ids), limit):
            window = ids[start:start + limit]
            context = ids[max(0, start - (limit + 1 - len(window))):start] if start else [prefix]
            pairs.append((context, window))
            owners.append(n)
    totals = [[0.0, 0] for _ in texts]
    for owner, (logp, count, _) in zip(owners, score_tokens(model, pairs, None, batch_size, limit, "perplexity")):
        totals[owner][0] += logp
        totals[owner][1] += count
    return [(t[0], int(t[1])) for t in totals]


@torch.no_grad()
def generate_chat(model: Any, prompts: list[tuple[list[dict[str, str]], dict[str, list[Any]]]], batch_size: int = 16,
                  max_new_tokens: int = 32, desc: str = "generating") -> list[str]:
    """Greedy answers to chat prompts (with media), batched (left-padded) through `mmadapt.generate`."""
    from mmadapt.generate import generate_batch

    order = sorted(range(len(prompts)), key=lambda i: -sum(len(m["content"]) for m in prompts[i][0]))
    answers: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=len(order) < 2 * batch_size):
        chunk = order[start:start + batch_size]
        for i, text in zip(chunk, generate_batch(model, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens)):
            answers[i] = text
    return answers


@torch.no_grad()
def generate_raw(model: Any, contexts: list[str], until: list[list[str]] | None = None, batch_size: int = 16,
                 max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of raw texts, cut at the first of each request's `until` strings."""
    tok = model.tokenizer
    encoded = [tok(c, add_special_tokens=False)["input_ids"] or [tok.bos_token_id or tok.eos_token_id] for c in contexts]
    order = sorted(range(len(contexts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(contexts)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in chunk])  # [B, T], left padded
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk])
        new = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new_tokens,
                             do_sample=False)
        for i, row in zip(chunk, new):
            text = tok.decode(row, skip_special_tokens=True)
            for stop in (until[i] if until else []):
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            out[i] = text
    return out
