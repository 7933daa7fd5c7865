"""FT-L (the baseline of the ROME paper): fine-tune one MLP output projection on the new targets, each weight kept within ±ε of its original."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from mmadapt.editing.common import EditResult, accumulate, frozen
from mmadapt.editing.requests import EditRequest, check_batch
from mmadapt.editing.spec import check_layers, default_rome_layer, spec_for
from mmadapt.editing.tokens import device_of, encode, pad, pad_id, render, target_logprobs

logger = logging.getLogger(__name__)


@dataclass
class FTHParams:
    layer: int | None = None  # default: the same layer ROME would edit
    lr: float = 5e-4
    steps: int = 25
    norm_constraint: float = 5e-4  # L∞ bound on every weight's change
    stop_nll: float = 0.01
    spec: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.norm_constraint <= 0:
            raise ValueError("steps must be >= 1, lr > 0 and norm_constraint > 0")


def apply_ft(model: nn.Module, tok, requests: list[EditRequest], hparams: FTHParams | None = None,
             cache: object = None, model_id: str | None = None) -> EditResult:
    """Adam on the mean target NLL of the edit prompts, training only the chosen layer's projection (in place).

    `cache` and `model_id` are accepted so every method has one signature; FT-L needs no statistics.
    """
    hp = hparams or FTHParams()
    check_batch(requests)
    spec = spec_for(model, hp.spec)
    layer = check_layers(model, [hp.layer if hp.layer is not None else default_rome_layer(model)], "layer")[0]
    name = spec.weight_name(layer)
    start = time.perf_counter()
    batch = []
    for request in requests:
        text, span = render("", request.prompt, request.subject)
        batch.append(encode(tok, text, span, request.target_new, where=request.where))
    ids, mask = pad(batch, pad_id(tok), device_of(model))
    param = model.get_parameter(name)
    original = param.detach().clone()
    nll_before = nll_after = float("nan")
    with frozen(model):
        param.requires_grad_(True)
        optimiser = torch.optim.Adam([param], lr=hp.lr)
        for step in range(hp.steps + 1):
            optimiser.zero_grad()
            nll = -target_logprobs(model(input_ids=ids, attention_mask=mask).logits, batch, ids).mean()
            nll_after = float(nll.detach())
            if step == 0:
                nll_before = nll_after
            if step == hp.steps or nll_after < hp.stop_nll:
                break
            nll.backward()
            optimiser.step()
            with torch.no_grad():  # project back into the L∞ ball around the original weights
                param.copy_(torch.clamp(param, original - hp.norm_constraint, original + hp.norm_constraint))
    deltas: dict[str, torch.Tensor] = {}
    accumulate(deltas, name, param.detach().float() - original.float())
    seconds = time.perf_counter() - start
    logger.info("FT-L at %s: nll %.3f -> %.3f", name, nll_before, nll_after)
    metrics = {"seconds": seconds, "seconds_per_edit": seconds / len(requests), "nll_before": nll_before,
               "nll_after": nll_after, f"delta_norm.{name}": float(deltas[name].norm())}
    return EditResult(deltas, metrics, {"layers": [layer]})


apply_ft.hparams_class = FTHParams  # type: ignore[attr-defined]  # the CLI validates --hparams against it
