"""Keys and values shared by ROME and MEMIT.

- keys: a module's input at the subject's last token, in the edit prompt and under random prefixes
  (ROME and MEMIT average the prefixed ones);
- value: the shift `delta` of a module's output at the subject's last token that makes the
  target likely (NLL over prefixed prompts), keeps the subject's essence (KL on "{} is a") and
  stays small (weight decay, norm clamp). ROME optimises it at the MLP output projection, MEMIT
  at the residual stream after its last edited layer.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmadapt.editing.common import ValueHParams, frozen
from mmadapt.editing.requests import EditRequest
from mmadapt.editing.tokens import Encoded, device_of, encode, pad, pad_id, render, target_logprobs
from mmadapt.hooks import Trace

logger = logging.getLogger(__name__)


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _subject_batch(tok, requests: list[EditRequest], prefixes: list[str]) -> list[Encoded]:
    """Every request under every prefix, request-major: row r * len(prefixes) + p."""
    rows = []
    for request in requests:
        for prefix in prefixes:
            text, span = render(prefix, request.prompt, request.subject)
            rows.append(encode(tok, text, span, where=request.where))
    return rows


@torch.no_grad()
def module_io_at_subject(model: nn.Module, tok, module: str, requests: list[EditRequest], prefixes: list[str],
                         average: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [n, d_in], outputs [n, d_out]) of `module` at each request's subject last token, averaged over
    prefixes ([n, n_prefixes, d] each when not `average`)."""
    batch = _subject_batch(tok, requests, prefixes)
    ids, mask = pad(batch, pad_id(tok), device_of(model))
    with Trace(model, module, retain_input=True, retain_output=True) as trace:
        model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(batch), device=ids.device)
    cols = torch.tensor([e.subject_last for e in batch], device=ids.device)
    inputs = trace.input[rows, cols].float().reshape(len(requests), len(prefixes), -1)  # [n, n_prefixes, d_in]
    outputs = trace.output[rows, cols].float().reshape(len(requests), len(prefixes), -1)  # [n, n_prefixes, d_out]
    return (inputs.mean(1), outputs.mean(1)) if average else (inputs, outputs)


def compute_keys(model: nn.Module, tok, module: str, requests: list[EditRequest], prefixes: list[str]) -> torch.Tensor:
    """Per request, `module`'s input at the subject's last token averaged over prefixes -> [n, d_in]."""
    return module_io_at_subject(model, tok, module, requests, prefixes)[0]


def optimise_values(model: nn.Module, tok, module: str, requests: list[EditRequest], prefixes: list[str],
                    hp: ValueHParams) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]]]:
    """Per request, the shift `delta` of `module`'s output at the subject's last token that writes its target.

    The requests are optimised together (`hp.value_batch` at a time): each delta row only enters its
    own request's loss terms and Adam is element-wise, so this equals one optimisation per request
    while paying the per-step overhead once. A request stops moving once its NLL is below `stop_nll`.
    Returns (deltas [n, d], initial outputs at the subject in the unprefixed prompt [n, d], metrics per request).
    """
    deltas, inits, metrics = [], [], []
    for start in range(0, len(requests), hp.value_batch):
        d, i, m = _optimise_chunk(model, tok, module, requests[start : start + hp.value_batch], prefixes, hp)
        deltas.append(d)
        inits.append(i)
        metrics += m
    return torch.cat(deltas), torch.cat(inits), metrics


def _optimise_chunk(model: nn.Module, tok, module: str, requests: list[EditRequest], prefixes: list[str],
                    hp: ValueHParams) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]]]:
    device = device_of(model)
    n, n_pre, n_kl = len(requests), len(prefixes), len(hp.kl_prompts)
    rewrite, kl_rows = [], []  # request-major: rewrite row r * n_pre + p, KL row r * n_kl + j
    for request in requests:
        for prefix in prefixes:
            text, span = render(prefix, request.prompt, request.subject)
            rewrite.append(encode(tok, text, span, request.target_new, where=request.where))
        for template in hp.kl_prompts:
            text, span = render("", template, request.subject)
            kl_rows.append(encode(tok, text, span, where=request.where))
    batch = rewrite + kl_rows
    ids, mask = pad(batch, pad_id(tok), device)
    owner = torch.tensor([r for r in range(n) for _ in range(n_pre)] + [r for r in range(n) for _ in range(n_kl)],
                         device=device)  # which request each row belongs to
    rows = torch.arange(len(batch), device=device)
    subject_cols = torch.tensor([e.subject_last for e in batch], device=device)
    kl_index = torch.arange(len(rewrite), len(batch), device=device)
    kl_cols = torch.tensor([len(e.input_ids) - 1 for e in kl_rows], device=device)  # predicts what follows "{} is a"

    def request_nll(logits: torch.Tensor) -> torch.Tensor:  # [n]: mean over prefixes of the target's mean NLL
        return -target_logprobs(logits[: len(rewrite)], rewrite, ids[: len(rewrite)]).reshape(n, n_pre).mean(1)

    def request_kl(logits: torch.Tensor) -> torch.Tensor:  # [n]: KL(initial || current) on the essence prompts
        current = F.log_softmax(logits[kl_index, kl_cols].float(), dim=-1)
        kl = (kl_init.exp() * (kl_init - current)).sum(-1)  # [n * n_kl]
        return kl.reshape(n, n_kl).mean(1) if n_kl else torch.zeros(n, device=device)

    with frozen(model):
        with torch.no_grad(), Trace(model, module) as trace:
            logits = model(input_ids=ids, attention_mask=mask).logits
        first_rows = torch.arange(n, device=device) * n_pre  # each request's unprefixed prompt
        init = trace.output[first_rows, subject_cols[first_rows]].float().clone()  # [n, d]
        kl_init = F.log_softmax(logits[kl_index, kl_cols].float(), dim=-1)
        nll_before = request_nll(logits)
        nll = nll_before.clone()

        delta = torch.zeros_like(init, requires_grad=True)  # [n, d]
        optimiser = torch.optim.Adam([delta], lr=hp.v_lr)
        init_norm = init.norm(dim=1).clamp_min(1e-8)  # [n]
        max_norm = hp.clamp_norm_factor * init_norm
        active = torch.ones(n, dtype=torch.bool, device=device)
        steps = torch.zeros(n)

        def shift(output: Any, _name: str) -> Any:
            hidden = _hidden(output)
            shifted = hidden.index_put((rows, subject_cols), delta[owner].to(hidden.dtype), accumulate=True)
            return _with_hidden(output, shifted)

        for _ in range(hp.v_steps):
            optimiser.zero_grad()
            with Trace(model, module, retain_output=False, edit_output=shift):
                logits = model(input_ids=ids, attention_mask=mask).logits
            nll_now = request_nll(logits)
            nll = torch.where(active, nll_now.detach(), nll)
            active = active & (nll >= hp.stop_nll)
            if not active.any():
                break
            steps += active.cpu().float()
            decay = delta.norm(dim=1) ** 2 / init_norm**2
            loss = (nll_now + hp.kl_factor * request_kl(logits) + hp.v_weight_decay * decay)[active].sum()
            loss.backward()
            done = delta.detach()[~active].clone()
            optimiser.step()
            delta.data[~active] = done  # finished requests stay where they are (Adam's momentum would move them)
            with torch.no_grad():  # the norm constraint (ROME's clamp_norm_factor), per request
                norm = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta.mul_(torch.clamp(max_norm.unsqueeze(1) / norm, max=1.0))
        if active.any():  # the last step moved delta after its NLL was measured: report the NLL it ends with
            with torch.no_grad(), Trace(model, module, retain_output=False, edit_output=shift):
                nll = torch.where(active, request_nll(model(input_ids=ids, attention_mask=mask).logits), nll)
    delta = delta.detach()
    metrics = [{"nll_before": float(nll_before[i]), "nll_after": float(nll[i]), "steps": float(steps[i]),
                "delta_norm": float(delta[i].norm()), "init_norm": float(init_norm[i])} for i in range(n)]
    logger.debug("values for %d requests at %s: %s", n, module, metrics)
    return delta, init, metrics
