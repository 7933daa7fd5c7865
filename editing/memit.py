"""MEMIT (Meng et al. 2023): many facts at once, spread over a range of MLP layers.

Each request gets a target residual state z_i (found at the last edited layer by
`value.optimise_values`). Then, layer by layer, the remaining residual R = (z - current) / (layers
left) is written by the least-squares update that keeps the other keys' outputs (weighted by
λ·C, C = E[k kᵀ] from the same cached statistics as ROME):
    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹.
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
from mmadapt.editing.spec import check_layers, default_memit_layers, spec_for
from mmadapt.editing.stats import StatsCache
from mmadapt.editing.trace import traced_edit_layer
from mmadapt.editing.value import compute_keys, module_io_at_subject, optimise_values

logger = logging.getLogger(__name__)


@dataclass
class MemitHParams(MomentHParams):
    # default: the layers up to the one causal tracing finds, as many as spec.default_memit_layers picks
    # (spec.default_memit_layers itself when tracing finds none)
    layers: list[int] | None = None
    mom2_update_weight: float = 1e4  # λ: how strongly other keys' outputs are preserved

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mom2_update_weight < 0:
            raise ValueError("mom2_update_weight must be >= 0")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one layer")


def memit_update(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor | None, weight: float,
                 ridge: float = 0.0) -> torch.Tensor:
    """ΔW [d_out, d_in] solving ΔW (λC + K Kᵀ) = R Kᵀ, where K's columns are `keys` [n, d_in] and R's are `resid` [n, d_out].

    Computed in float64; it minimises λ·tr(ΔW C ΔWᵀ) + ||ΔW kᵢ - rᵢ||² summed over requests.
    """
    k = keys.double().T  # [d_in, n]
    r = resid.double().T  # [d_out, n]
    base = cov.double().to(k.device) if cov is not None else torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    system = regularised(weight * base + k @ k.T, ridge)  # [d_in, d_in], symmetric
    adjusted = torch.linalg.solve(system, k)  # [d_in, n]
    return r @ adjusted.T  # [d_out, d_in]


def apply_memit(model: nn.Module, tok, requests: list[EditRequest], hparams: MemitHParams | None = None,
                cache: StatsCache | None = None, model_id: str | None = None) -> EditResult:
    """Apply all requests together with MEMIT (in place)."""
    hp = hparams or MemitHParams()
    check_batch(requests)
    spec = spec_for(model, hp.spec)
    chosen, located = hp.layers, {"source": "hparams"}
    if chosen is None:  # MEMIT spreads the update over the critical layer and those just before it
        default = default_memit_layers(model)
        top, located = traced_edit_layer(model, tok, requests, spec, fallback=default[-1])
        chosen = default if located["source"] == "default" else list(range(max(0, top - len(default) + 1), top + 1))
    layers = check_layers(model, chosen, "layers")
    modules = [spec.rewrite_name(layer) for layer in layers]
    z_module = spec.layer_name(layers[-1])
    start = time.perf_counter()
    covs = second_moments(model, tok, modules, hp, cache, model_id)  # every layer in one pass
    stats_seconds = time.perf_counter() - start
    prefixes = context_prefixes(model, tok, hp)

    deltas_z, init, infos = optimise_values(model, tok, z_module, requests, prefixes, hp)
    z = init + deltas_z  # [n, d_model]: the residual state each edit should produce

    deltas: dict[str, torch.Tensor] = {}
    for i, (layer, module) in enumerate(zip(layers, modules)):
        keys = compute_keys(model, tok, module, requests, prefixes)  # [n, d_in], on the model edited so far
        current = module_io_at_subject(model, tok, z_module, requests, [""])[1]  # [n, d_model]
        resid = (z - current) / (len(layers) - i)  # spread what is left over the remaining layers
        update = memit_update(keys, resid, covs.get(module), hp.mom2_update_weight, hp.ridge).float()
        name = spec.weight_name(layer)
        update = spec.from_out_in(update)
        add_delta(model, name, update)
        accumulate(deltas, name, update)
        logger.info("MEMIT layer %d: residual norm %.3f, update norm %.3f", layer, float(resid.norm(dim=1).mean()),
                    float(update.norm()))
    seconds = time.perf_counter() - start
    metrics = edit_metrics(seconds, stats_seconds, infos, deltas)
    return EditResult(deltas, metrics, {"layers": layers, "layer_choice": located, "targets": z.cpu(), "z_module": z_module,
                                        "prefixes": prefixes})


apply_memit.hparams_class = MemitHParams  # type: ignore[attr-defined]  # the CLI validates --hparams against it
