"""What every editing method shares: the result type, hyper-parameters of the value search, weight deltas, random prefixes."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from mmadapt.editing.stats import StatsCache, StatsConfig
from mmadapt.editing.tokens import device_of


@dataclass
class EditResult:
    """`deltas`: {param_name: Tensor in the parameter's layout, float32}, already added to the model.

    `metrics`: flat numbers (seconds, losses, delta norms); `details`: method internals kept for
    tests and manifests (keys k*, values v*, layers).
    """

    deltas: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValueHParams:
    """The search for the value a subject should map to (ROME's v*, MEMIT's z), and the random prefixes."""

    v_lr: float = 0.5
    v_steps: int = 25
    v_weight_decay: float = 0.5  # on ||delta||^2 / ||initial output||^2
    clamp_norm_factor: float = 4.0  # ||delta|| <= factor * ||initial output||
    kl_factor: float = 0.0625  # keeps the subject's essence ("{} is a") distribution unchanged
    kl_prompts: list[str] = field(default_factory=lambda: ["{} is a"])
    stop_nll: float = 0.05  # stop once the target's mean NLL is below this
    num_prefixes: int = 5  # random prefixes sampled from the model (plus the empty one)
    prefix_length: int = 8
    prefix_seeds: list[str] = field(default_factory=lambda: ["The", "Therefore", "Because", "I", "You"])
    seed: int = 0
    value_batch: int = 16  # requests whose values are optimised in one batch (memory vs speed)

    def __post_init__(self) -> None:
        if self.v_steps < 1 or self.v_lr <= 0 or self.value_batch < 1:
            raise ValueError("v_steps and value_batch must be >= 1 and v_lr > 0")
        if self.num_prefixes < 0 or self.prefix_length < 1:
            raise ValueError("num_prefixes must be >= 0 and prefix_length >= 1")
        for template in self.kl_prompts:
            if template.count("{}") != 1:
                raise ValueError(f"kl_prompts entry {template!r} must contain '{{}}' exactly once")


@dataclass
class MomentHParams(ValueHParams):
    """Plus the second-moment statistics C = E[k k^T] of the rewritten modules' inputs."""

    mom2: bool = True  # False: C = I (no corpus needed, edits generalise less cleanly)
    ridge: float = 1e-2  # C + ridge * mean(diag C) * I: rarely-active MLP units cannot make C (near) singular
    stats: StatsConfig = field(default_factory=StatsConfig)
    spec: dict[str, str] | None = None  # module templates for a family not in spec.SPECS


def second_moments(model: nn.Module, tok, modules: list[str], hp: MomentHParams, cache: StatsCache | None,
                   model_id: str | None) -> dict[str, torch.Tensor]:
    """C = E[k kᵀ] of each module's input on the unedited model (loaded or computed once); {} when `hp.mom2` is off
    (C = I). Called before any weight changes."""
    if not hp.mom2:
        return {}
    cache = cache if cache is not None else StatsCache(hp.stats.cache_dir)
    return cache.second_moments(model, tok, modules, hp.stats, model_id=model_id)


def edit_metrics(seconds: float, stats_seconds: float, infos: list[dict[str, Any]],
                 deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    """The flat metrics every locate-then-edit method reports: timings, the target's NLL before/after, delta norms."""
    n = len(infos)
    return {
        "seconds": seconds,
        "stats_seconds": stats_seconds,
        "seconds_per_edit": (seconds - stats_seconds) / n,
        "nll_before": sum(r["nll_before"] for r in infos) / n,
        "nll_after": sum(r["nll_after"] for r in infos) / n,
        **{f"delta_norm.{name}": float(d.norm()) for name, d in deltas.items()},
    }


def regularised(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """cov + ridge * mean(diag) * I, in float64."""
    cov = cov.double()
    scale = cov.diagonal().mean().clamp_min(1e-12)
    return cov + ridge * scale * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)


@torch.no_grad()
def add_delta(model: nn.Module, name: str, delta: torch.Tensor) -> None:
    """param += delta (computed in float32, stored in the parameter's dtype)."""
    param = model.get_parameter(name)
    param.copy_((param.float() + delta.to(param.device, torch.float32)).to(param.dtype))


def accumulate(deltas: dict[str, torch.Tensor], name: str, delta: torch.Tensor) -> None:
    delta = delta.detach().float().cpu()
    deltas[name] = deltas[name] + delta if name in deltas else delta


@contextmanager
def restored(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Run a block that edits `names` and put their exact original values back afterwards."""
    saved = {name: model.get_parameter(name).detach().clone() for name in names}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                model.get_parameter(name).copy_(value)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients (the value search only trains a delta vector); eval mode; both restored after."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)


@torch.no_grad()
def context_prefixes(model: nn.Module, tok, hp: ValueHParams) -> list[str]:
    """"" plus `num_prefixes` short texts sampled (top-5) from the model itself, each ending in ". " (ROME's context templates).

    A seeded `torch.Generator` keeps this reproducible without touching the global RNG.
    """
    if hp.num_prefixes == 0:
        return [""]
    device = device_of(model)
    generator = torch.Generator(device="cpu").manual_seed(hp.seed)
    prefixes = [""]
    for i in range(hp.num_prefixes):
        seed_text = hp.prefix_seeds[i % len(hp.prefix_seeds)] if hp.prefix_seeds else ""
        ids = list(tok(seed_text)["input_ids"]) if seed_text else []
        if not ids:
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ids = [int(start if start is not None else 0)]
        n_seed = len(ids)
        for _ in range(hp.prefix_length):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
            top = torch.topk(logits, k=min(5, logits.numel()))
            choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
            ids.append(int(top.indices[choice]))
        text = tok.decode(ids if seed_text else ids[n_seed:], skip_special_tokens=True).strip()
        prefixes.append(f"{text}. " if text else "")
    return prefixes
