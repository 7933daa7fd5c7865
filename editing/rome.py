"""ROME (Meng et al. 2022): one fact at a time, a rank-one update of one MLP output projection.

The key k̄ is the projection's input at the subject's last token averaged over random prefixes;
k* is that input in the edit prompt itself and v* = W k* + delta, with delta found by
`value.optimise_values` (target likelihood over the prefixed prompts, KL on essence prompts, norm
constraint). The update, with C = E[k kᵀ] from the cached statistics and u = C⁻¹ k̄,
    W' = W + (v* - W k*) uᵀ / (uᵀ k*),
gives W' k* = v* exactly while keys uncorrelated with k̄ under C barely move. (As in ROME's code:
the direction comes from the prefix average, the exact write from the prompt's own key; writing
exactly at k̄ instead misses the prompt whenever prefixes move the key, as they do in small models.)
Several requests are applied one after another, each on the model the previous one edited.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from mmadapt.editing.common import (EditResult, MomentHParams, accumulate, add_delta, context_prefixes, edit_metrics,
                                    regularised, second_moments)
from mmadapt.editing.requests import EditRequest, check_batch
from mmadapt.editing.spec import check_layers, default_rome_layer, spec_for
from mmadapt.editing.stats import StatsCache
from mmadapt.editing.trace import traced_edit_layer
from mmadapt.editing.value import module_io_at_subject, optimise_values

logger = logging.getLogger(__name__)


@dataclass
class RomeHParams(MomentHParams):
    layer: int | None = None  # default: where causal tracing finds the facts (spec.default_rome_layer if it finds none)


def rank_one_update(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cov: torch.Tensor | None = None,
                    ridge: float = 0.0, direction: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW [d_out, d_in] such that (weight + ΔW) @ key == value, along u = C⁻¹ direction (default: the key).

    weight [d_out, d_in], key/direction [d_in], value [d_out]; computed in float64.
    """
    w, k, v = weight.double(), key.double(), value.double()
    d = direction.double().to(k.device) if direction is not None else k
    u = torch.linalg.solve(regularised(cov.to(k.device), ridge), d) if cov is not None else d  # [d_in]
    return torch.outer(v - w @ k, u) / (u @ k)  # [d_out, d_in]


def apply_rome(model: nn.Module, tok, requests: list[EditRequest], hparams: RomeHParams | None = None,
               cache: StatsCache | None = None, model_id: str | None = None) -> EditResult:
    """Apply each request with ROME (in place); the returned deltas sum every update per parameter."""
    hp = hparams or RomeHParams()
    check_batch(requests)
    spec = spec_for(model, hp.spec)
    chosen, located = hp.layer, {"source": "hparams"}
    if chosen is None:  # before statistics and prefixes: tracing must see the unedited model
        chosen, located = traced_edit_layer(model, tok, requests, spec, fallback=default_rome_layer(model))
    layer = check_layers(model, [chosen], "layer")[0]
    module, param_name = spec.rewrite_name(layer), spec.weight_name(layer)
    start = time.perf_counter()
    cov = second_moments(model, tok, [module], hp, cache, model_id).get(module)
    stats_seconds = time.perf_counter() - start
    prefixes = context_prefixes(model, tok, hp)
    deltas: dict[str, torch.Tensor] = {}
    keys, values, per_request = [], [], []
    for request in requests:
        keys_p = module_io_at_subject(model, tok, module, [request], prefixes, average=False)[0][0]  # [n_prefixes, d_in]
        key = keys_p[0]  # the edit prompt itself (prefix "")
        delta, _init, infos = optimise_values(model, tok, module, [request], prefixes, hp)
        delta, info = delta[0], infos[0]
        weight = spec.to_out_in(model.get_parameter(param_name).detach()).float()  # [d_out, d_in]
        value = weight @ key + delta  # v* in the projection's bias-free output space
        update = rank_one_update(weight, key, value, cov, hp.ridge, direction=keys_p.mean(0)).float()
        update = spec.from_out_in(update)
        add_delta(model, param_name, update)
        accumulate(deltas, param_name, update)
        keys.append(key.cpu())
        values.append(value.cpu())
        per_request.append(info)
        logger.info("ROME %s -> %r at %s: nll %.3f -> %.3f", request.subject, request.target_new, module,
                    info["nll_before"], info["nll_after"])
    seconds = time.perf_counter() - start
    metrics = edit_metrics(seconds, stats_seconds, per_request, deltas)
    return EditResult(deltas, metrics, {"layers": [layer], "layer_choice": located, "keys": keys, "values": values,
                                        "module": module, "prefixes": prefixes})


apply_rome.hparams_class = RomeHParams  # type: ignore[attr-defined]  # the CLI validates --hparams against it
