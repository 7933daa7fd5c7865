"""Merge methods as pure functions on one tensor name at a time: `method(base, tensors, params) -> Tensor`.

Task arithmetic, TIES and DARE are one parameterised implementation (`task_vector_merge`): task
vectors `delta_i = model_i - base` are optionally sparsified (TIES: keep the `int(density * n)`
entries of largest magnitude; DARE: keep each entry with probability `density`; with `rescale`, the
survivors are scaled back to the delta's L1 norm), weighted, optionally sign-elected (TIES: keep only
entries agreeing with the sign of the weighted sum, then take their mean), summed and scaled by
lambda (`scaling`). Linear (a weighted model soup) and SLERP (spherical interpolation of two models)
are separate small functions.

The formulas, defaults and edge cases are mergekit 0.1.5's (`merge_methods/generalized_task_arithmetic.py`,
`sparsify.py`, `slerp.py`, `linear.py`); tests/merge/test_mergekit_equality.py compares the outputs.

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
    t: float = 0.5  # SLERP: 0 -> the start (base_model, or tensors[0] without one), 1 -> the other end
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
    """Boolean mask keeping exactly k = max(1, int(density * n)) entries of largest |delta| (TIES trim).

    k is mergekit's (floor, at least one entry while density > 0). Entries tied with the k-th largest
    magnitude are kept in index order until k are kept; kthvalue needs no n-sized index buffer, unlike
    argsort/topk, which matters for embedding matrices of hundreds of millions of entries.
    """
    n = delta.numel()
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0.0 or n == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    k = max(1, int(density * n))
    magnitude = delta.abs().float().flatten()  # mergekit ranks float32 magnitudes
    threshold = magnitude.kthvalue(n - k + 1).values
    mask = magnitude > threshold
    missing = k - int(mask.sum())
    if missing > 0:  # fill up from the entries equal to the threshold (usually one)
        ties = torch.nonzero(magnitude == threshold).flatten()[:missing]
        mask[ties] = True
    return mask.view(delta.shape)


def random_mask(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Boolean mask keeping each entry independently with probability `density` (DARE drop, p = 1 - density)."""
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density


def sparsify(delta: torch.Tensor, density: float, how: Sparsify, rescale: bool, seed: int = 0,
             eps: float = 1e-7) -> torch.Tensor:
    """Zero all but a `density` fraction of a task vector.

    With `rescale`, the survivors are multiplied by |delta|_1 / |kept|_1 (mergekit's `rescale_norm: l1`),
    which is about 1/density for a random mask (DARE's rescale) and exact in the L1 norm.
    """
    if how == "none" or density >= 1.0:
        return delta
    mask = magnitude_mask(delta, density) if how == "magnitude" else random_mask(delta, density, seed)
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    return kept if before < eps or after < eps else kept * (before / after)


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
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)  # mergekit's guards, both
    else:
        merged = weighted.sum(dim=0)
        divisor = weights.sum(dim=0).expand_as(merged)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    del weighted
    if normalize:
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
                eps: float = 1e-8, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation between tensors[0] (t=0) and tensors[1] (t=1), flattened to vectors.

    The run puts base_model first when the config names one (mergekit's convention: t=0 is the base).
    The angle comes from the normalised vectors; the interpolation weights apply to the original
    ones, so unit inputs give a unit output at angle t*theta from tensors[0]. Nearly (anti)parallel
    vectors (|cos| > 0.9995) have no stable arc: linear interpolation. A zero vector is normalised by 1,
    as mergekit does (so it sits at a right angle to the other end).
    """
    if len(tensors) != 2:
        raise ValueError(f"slerp merges exactly two tensors, got {len(tensors)}")
    _check_shapes(None, tensors, params, per_model=False)
    dtype = compute_dtype(*tensors)
    a, b = tensors[0].to(dtype), tensors[1].to(dtype)
    t = params.t
    norm_a, norm_b = a.norm(), b.norm()
    norm_a = norm_a if norm_a > eps else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > eps else torch.ones_like(norm_b)
    dot = torch.clamp((a.flatten() / norm_a) @ (b.flatten() / norm_b), -1.0, 1.0)
    if dot.abs() > dot_threshold:
        return (1 - t) * a + t * b
    theta = torch.arccos(dot)
    sin_theta = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / sin_theta) * a + (torch.sin(t * theta) / sin_theta) * b


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: `merge(base, tensors, params)` plus what the run validates up front."""

    name: str
    merge: Callable[[torch.Tensor | None, Sequence[torch.Tensor], MergeParams], torch.Tensor]
    needs_base: bool
    model_params: tuple[str, ...]  # read per model: weight, density
    global_params: tuple[str, ...]  # read once: scaling, normalize, rescale, t
    num_models: int | None = None  # exact count, base_model included when base_is_start (slerp: 2); None: 1+
    base_is_start: bool = False  # slerp: base_model, when set, is tensors[0] (the t=0 end), as in mergekit

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
    # mergekit's default: no normalisation (the agreeing deltas are summed, not averaged)
    partial(task_vector_merge, how="random", consensus=True, default_normalize=False, default_rescale=True),
    needs_base=True, model_params=_TASK, global_params=("scaling", "normalize", "rescale"),
)
slerp = MergeMethod("slerp", slerp_merge, needs_base=False, model_params=(), global_params=("t",), num_models=2,
                    base_is_start=True)
