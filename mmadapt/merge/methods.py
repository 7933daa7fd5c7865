"""Merge methods as pure functions on one tensor name at a time: `method(base, tensors, params) -> Tensor`.

Task arithmetic, TIES and DARE are one parameterised implementation (`task_vector_merge`): task
vectors `delta_i = model_i - base` are optionally sparsified (TIES: keep the top `density` fraction
by magnitude; DARE: keep each entry with probability `density` and rescale by 1/density), weighted,
optionally sign-elected (TIES: keep only entries agreeing with the sign of the weighted sum, then
take their mean), summed and scaled by lambda (`scaling`). Linear (a weighted model soup) and SLERP
(spherical interpolation of two models) are separate small functions.

Every registered name is a `MergeMethod`: the function plus what the run must check before any
work (does it need a base model, how many models, which parameters it reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal, Sequence

import torch

Sparsify = Literal["none", "magnitude", "random"]


@dataclass
class MergeParams:
    """The parameters of one merge of one tensor name, already resolved for that name (see params.py).

    `weights[i]` / `densities[i]` belong to `tensors[i]`; `normalize` / `rescale` None mean the
    method's default.
    """

    weights: list[float] = field(default_factory=list)
    densities: list[float] = field(default_factory=list)
    scaling: float = 1.0  # lambda: how much of the merged task vector is added to the base
    normalize: bool | None = None  # divide by the (agreeing) weights' sum
    rescale: bool | None = None  # multiply kept entries by 1/density after sparsification
    t: float = 0.5  # SLERP: 0 -> tensors[0], 1 -> tensors[1]
    seed: int = 0  # DARE's random masks (the run derives one per tensor name)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 deltas lose too much precision)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_shapes(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], params: MergeParams, per_model: bool) -> None:
    shapes = {tuple(t.shape) for t in tensors} | ({tuple(base.shape)} if base is not None else set())
    if len(shapes) != 1:
        raise ValueError(f"tensors to merge differ in shape: {sorted(shapes)}")
    if per_model and (len(params.weights) != len(tensors) or len(params.densities) != len(tensors)):
        raise ValueError(f"{len(tensors)} tensors but {len(params.weights)} weights and {len(params.densities)} densities")


def _weights_like(weights: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    # [n] -> [n, 1, ..., 1] so it broadcasts over the stacked tensors [n, *shape]
    w = torch.tensor(list(weights), dtype=like.dtype)
    return w.view(-1, *([1] * (like.dim() - 1)))


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask keeping the `density` fraction of entries with the largest |delta| (TIES trim).

    Entries tied with the k-th largest magnitude are all kept (kthvalue needs no index buffer,
    unlike topk, which matters for embedding matrices of hundreds of millions of entries).
    """
    n = delta.numel()
    k = int(round(density * n))
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    magnitude = delta.abs()
    threshold = magnitude.flatten().kthvalue(n - k + 1).values
    return magnitude >= threshold


def random_mask(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Boolean mask keeping each entry independently with probability `density` (DARE drop, p = 1 - density)."""
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density


def sparsify(delta: torch.Tensor, density: float, how: Sparsify, rescale: bool, seed: int = 0) -> torch.Tensor:
    """Zero all but a `density` fraction of a task vector; with `rescale`, divide the survivors by density."""
    if how == "none" or density >= 1.0:
        return delta
    mask = magnitude_mask(delta, density) if how == "magnitude" else random_mask(delta, density, seed)
    kept = delta * mask
    return kept / density if rescale and density > 0 else kept


def sign_agreement(weighted: torch.Tensor) -> torch.Tensor:
    """TIES sign election on stacked weighted task vectors [n, *shape] -> mask [n, *shape].

    The elected sign per entry is that of the sum (ties elect +); a model's entry is kept where its
    sign equals the elected one (zeros never agree, so they do not dilute the mean).
    """
    positive = weighted.sum(dim=0) >= 0  # [*shape]
    # bool comparisons instead of sign() == elected: no float [n, *shape] temporaries
    return torch.where(positive, weighted > 0, weighted < 0)


def task_vector_merge(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], params: MergeParams, *,
                      how: Sparsify, consensus: bool, default_normalize: bool, default_rescale: bool) -> torch.Tensor:
    """base + scaling * combine_i(w_i * sparsify(model_i - base)): task arithmetic, TIES, DARE."""
    if base is None:
        raise ValueError("task-vector merges need the base model's tensor")
    _check_shapes(base, tensors, params, per_model=True)
    dtype = compute_dtype(base, *tensors)
    base32 = base.to(dtype)
    rescale = default_rescale if params.rescale is None else params.rescale
    normalize = default_normalize if params.normalize is None else params.normalize
    # one [n, *shape] buffer filled in place: the streamed merge's peak memory is a few of these
    weighted = torch.empty((len(tensors), *base.shape), dtype=dtype)
    for i, t in enumerate(tensors):
        torch.sub(t.to(dtype), base32, out=weighted[i])
        weighted[i] = sparsify(weighted[i], params.densities[i], how, rescale, seed=params.seed + 7919 * (i + 1))
    weights = _weights_like(params.weights, weighted)  # [n, 1, ...]
    weighted.mul_(weights)
    if consensus:
        keep = sign_agreement(weighted)
        weighted.mul_(keep)
        merged = weighted.sum(dim=0)
        divisor = torch.zeros_like(merged)  # the disjoint mean: only the agreeing models count
        for i, w in enumerate(params.weights):
            divisor.add_(keep[i], alpha=w)
        del keep
    else:
        merged = weighted.sum(dim=0)
        divisor = weights.sum(dim=0).expand_as(merged)
    del weighted
    if normalize:
        divisor = torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
        merged = merged / divisor
    return base32 + params.scaling * merged


def linear_merge(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], params: MergeParams) -> torch.Tensor:
    """Weighted average of the models (a model soup); with normalize=False, the plain weighted sum."""
    _check_shapes(None, tensors, params, per_model=False)
    if len(params.weights) != len(tensors):
        raise ValueError(f"{len(tensors)} tensors but {len(params.weights)} weights")
    dtype = compute_dtype(*tensors)
    merged = torch.zeros(tensors[0].shape, dtype=dtype)
    for t, w in zip(tensors, params.weights):  # accumulated, not stacked: one extra tensor of memory
        merged.add_(t.to(dtype), alpha=w)
    normalize = True if params.normalize is None else params.normalize
    total = float(sum(params.weights))
    if normalize:
        if abs(total) < 1e-12:
            raise ValueError(f"linear merge: the weights {params.weights} sum to zero; cannot normalize")
        merged = merged / total
    return merged


def slerp_merge(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], params: MergeParams,
                eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between tensors[0] (t=0) and tensors[1] (t=1), flattened to vectors.

    The angle comes from the normalised vectors; the interpolation weights apply to the original
    ones, so unit inputs give a unit output at angle t*theta from tensors[0]. (Anti)parallel or zero
    vectors have no unique arc: linear interpolation.
    """
    if len(tensors) != 2:
        raise ValueError(f"slerp merges exactly two tensors, got {len(tensors)}")
    _check_shapes(None, tensors, params, per_model=False)
    dtype = compute_dtype(*tensors)
    a, b = tensors[0].to(dtype), tensors[1].to(dtype)
    t = params.t
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a < eps or norm_b < eps:
        return (1 - t) * a + t * b
    dot = torch.clamp((a.flatten() / norm_a) @ (b.flatten() / norm_b), -1.0, 1.0)
    if dot.abs() > 1 - 1e-6:
        return (1 - t) * a + t * b
    theta = torch.arccos(dot)
    sin_theta = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / sin_theta) * a + (torch.sin(t * theta) / sin_theta) * b


MODEL_PARAMS = ("weight", "density")  # per model (and per tensor-name filter)
GLOBAL_PARAMS = ("scaling", "normalize", "rescale", "t")


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: `merge(base, tensors, params)` plus what the run validates up front."""

    name: str
    merge: Callable[[torch.Tensor | None, Sequence[torch.Tensor], MergeParams], torch.Tensor]
    needs_base: bool
    model_params: tuple[str, ...]  # read per model: weight, density
    global_params: tuple[str, ...]  # read once: scaling, normalize, rescale, t
    num_models: int | None = None  # exact count (slerp: 2); None: one or more

    def __call__(self, base: torch.Tensor | None, tensors: Sequence[torch.Tensor], params: MergeParams) -> torch.Tensor:
        return self.merge(base, tensors, params)


_TASK = ("weight", "density")
linear = MergeMethod("linear", linear_merge, needs_base=False, model_params=("weight",), global_params=("normalize",))
task_arithmetic = MergeMethod(
    "task_arithmetic",
    partial(task_vector_merge, how="none", consensus=False, default_normalize=False, default_rescale=False),
    needs_base=True, model_params=("weight",), global_params=("scaling", "normalize"),
)
ties = MergeMethod(
    "ties",
    partial(task_vector_merge, how="magnitude", consensus=True, default_normalize=True, default_rescale=False),
    needs_base=True, model_params=_TASK, global_params=("scaling", "normalize", "rescale"),
)
dare_linear = MergeMethod(
    "dare_linear",
    partial(task_vector_merge, how="random", consensus=False, default_normalize=False, default_rescale=True),
    needs_base=True, model_params=_TASK, global_params=("scaling", "normalize", "rescale"),
)
dare_ties = MergeMethod(
    "dare_ties",
    partial(task_vector_merge, how="random", consensus=True, default_normalize=True, default_rescale=True),
    needs_base=True, model_params=_TASK, global_params=("scaling", "normalize", "rescale"),
)
slerp = MergeMethod("slerp", slerp_merge, needs_base=False, model_params=(), global_params=("t",), num_models=2)
