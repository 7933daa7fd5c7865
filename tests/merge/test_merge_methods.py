"""The algebra of the merge methods on fixed tensors: identities, equivalences, expectations, the arc."""

from __future__ import annotations

import math

import pytest
import torch

from mmadapt import registry
from mmadapt.errors import ConfigError
from mmadapt.merge import params as P
from mmadapt.merge.methods import MergeParams, magnitude_mask, random_mask

METHODS = ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"]


def method(name):
    return registry.resolve("merge_method", name)


def mp(n, weights=None, density=1.0, **kw):
    return MergeParams(weights=list(weights or [1.0] * n), densities=[density] * n, **kw)


@pytest.mark.parametrize("name", METHODS)
def test_one_model_with_weight_one_is_the_identity(name):
    base, model = torch.randn(16, 8), torch.randn(16, 8)
    out = method(name)(base, [model], mp(1))
    torch.testing.assert_close(out, model, rtol=0, atol=1e-6)


def test_every_registered_method_resolves():
    assert set(registry.names("merge_method")) == set(METHODS) | {"slerp"}
    for name in registry.names("merge_method"):
        assert method(name).name == name


def test_linear_is_the_weighted_average_or_sum():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(method("linear")(None, [a, b], mp(2, [1.0, 3.0])), (a + 3 * b) / 4)
    torch.testing.assert_close(method("linear")(None, [a, b], mp(2, [1.0, 3.0], normalize=False)), a + 3 * b)
    with pytest.raises(ValueError, match="sum to zero"):
        method("linear")(None, [a, b], mp(2, [1.0, -1.0]))


def test_task_arithmetic_adds_scaled_weighted_task_vectors():
    base = torch.randn(6, 4)
    a, b = base + torch.randn(6, 4), base + torch.randn(6, 4)
    out = method("task_arithmetic")(base, [a, b], mp(2, [0.5, 2.0], scaling=0.7))
    torch.testing.assert_close(out, base + 0.7 * (0.5 * (a - base) + 2.0 * (b - base)))


@pytest.mark.parametrize("normalize", [False, True])
def test_ties_with_full_density_and_no_sign_conflicts_equals_task_arithmetic(normalize):
    base = torch.randn(32, 16)
    signs = torch.randn(32, 16).sign()
    # every model moves each entry the same way (no conflicts), never by exactly zero
    models = [base + signs * (torch.rand(32, 16) + 0.1) for _ in range(3)]
    p = mp(3, [0.5, 1.0, 2.0], density=1.0, scaling=1.3, normalize=normalize)
    ties = method("ties")(base, models, p)
    ta = method("task_arithmetic")(base, models, p)
    torch.testing.assert_close(ties, ta, rtol=1e-6, atol=1e-6)


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    base = torch.zeros(4)
    # per entry: model deltas; expected after trim(density 0.5 keeps the 2 largest |d| per model) + election
    a = torch.tensor([3.0, -1.0, 0.5, -4.0])  # keeps 3, -4
    b = torch.tensor([1.0, 2.0, -5.0, -0.1])  # keeps 2, -5
    out = method("ties")(base, [a, b], mp(2, density=0.5))
    # entry 0: only a (3) -> 3; entry 1: only b (2) -> 2; entry 2: only b (-5) -> -5; entry 3: only a (-4) -> -4
    torch.testing.assert_close(out, torch.tensor([3.0, 2.0, -5.0, -4.0]))
    # conflict: +3 vs -1 (both kept); elected sign +, mean over agreeing models = 3
    out = method("ties")(base[:1], [torch.tensor([3.0]), torch.tensor([-1.0])], mp(2))
    torch.testing.assert_close(out, torch.tensor([3.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        method("ties")(base, [torch.tensor([3.0]), torch.tensor([-1.0])], mp(2))
    # agreement: +3 and +1 -> disjoint mean 2 (normalize) or sum 4 (normalize off)
    out = method("ties")(base[:1], [torch.tensor([3.0]), torch.tensor([1.0])], mp(2))
    torch.testing.assert_close(out, torch.tensor([2.0]))
    out = method("ties")(base[:1], [torch.tensor([3.0]), torch.tensor([1.0])], mp(2, normalize=False))
    torch.testing.assert_close(out, torch.tensor([4.0]))


def test_magnitude_mask_keeps_exactly_the_top_fraction():
    delta = torch.randn(100, 10)
    mask = magnitude_mask(delta, 0.3)
    assert int(mask.sum()) == 300
    assert delta.abs()[mask].min() >= delta.abs()[~mask].max()
    assert magnitude_mask(delta, 0.0).sum() == 0 and magnitude_mask(delta, 1.0).all()


@pytest.mark.parametrize("dare, plain", [("dare_linear", "task_arithmetic"), ("dare_ties", "ties")])
def test_dare_with_no_drops_equals_its_undropped_method(dare, plain):
    base = torch.randn(20, 10)
    models = [base + torch.randn(20, 10) for _ in range(3)]
    # normalize given explicitly: mergekit's defaults differ (ties normalises, dare_ties does not)
    p = mp(3, [1.0, 0.5, 0.25], density=1.0, scaling=0.9, seed=5, normalize=True)
    torch.testing.assert_close(method(dare)(base, models, p), method(plain)(base, models, p), rtol=0, atol=1e-6)


def test_dare_preserves_the_expected_task_vector():
    base = torch.randn(64, 64)
    delta = torch.randn(64, 64)
    density = 0.3
    draws = torch.stack([method("dare_linear")(base, [base + delta], mp(1, density=density, seed=s)) - base
                         for s in range(400)])
    one = draws[0]
    kept = one != 0
    assert abs(kept.float().mean().item() - density) < 0.03  # drop rate p = 0.7
    # survivors rescaled to the delta's L1 norm (mergekit's rescale), about 1/density
    scale = delta.abs().sum() / delta[kept].abs().sum()
    assert abs(scale.item() * density - 1) < 0.1
    torch.testing.assert_close(one[kept], (delta * scale)[kept], rtol=1e-5, atol=1e-5)
    # E[dare(delta)] = delta: the mean of 400 draws is within a few standard errors of delta
    stderr = delta.abs() * math.sqrt((1 - density) / density / 400)
    assert ((draws.mean(0) - delta).abs() <= 5 * stderr + 1e-6).float().mean() > 0.999
    relative = (draws.mean(0) - delta).norm() / delta.norm()
    assert relative < 0.1


def test_dare_masks_are_reproducible_and_differ_per_seed():
    d = torch.randn(50, 50)
    assert torch.equal(random_mask(d, 0.5, 1), random_mask(d, 0.5, 1))
    assert not torch.equal(random_mask(d, 0.5, 1), random_mask(d, 0.5, 2))


def test_slerp_returns_the_endpoints_and_stays_on_the_arc():
    a, b = torch.randn(10, 10), torch.randn(10, 10)
    slerp = method("slerp")
    assert torch.equal(slerp(None, [a, b], mp(2, t=0.0)), a)
    torch.testing.assert_close(slerp(None, [a, b], mp(2, t=1.0)), b)
    ua, ub = a / a.norm(), b / b.norm()
    theta = torch.arccos((ua.flatten() @ ub.flatten()).clamp(-1, 1))
    for t in (0.1, 0.25, 0.5, 0.9):
        out = slerp(None, [ua, ub], mp(2, t=t))
        assert out.norm().item() == pytest.approx(1.0, abs=1e-5)  # on the unit sphere
        angle = torch.arccos((out.flatten() @ ua.flatten()).clamp(-1, 1))
        assert angle.item() == pytest.approx(t * theta.item(), abs=1e-4)  # t of the way along the arc
        assert (angle + torch.arccos((out.flatten() @ ub.flatten()).clamp(-1, 1))).item() == pytest.approx(theta.item(), abs=1e-4)


def test_slerp_of_parallel_vectors_falls_back_to_lerp():
    a = torch.randn(8)
    out = method("slerp")(None, [a, 3 * a], mp(2, t=0.5))
    torch.testing.assert_close(out, 2 * a)


def test_methods_compute_in_float32_and_keep_bf16_inputs_exact_enough():
    base = torch.randn(64, 64).to(torch.bfloat16)
    model = (base.float() + 1e-3 * torch.randn(64, 64)).to(torch.bfloat16)
    out = method("task_arithmetic")(base, [model], mp(1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model.float())


# ----------------------------------------------------------------- per-tensor parameters


def test_parameter_schedules_scalars_gradients_and_filters():
    names = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(5)] + ["model.embed_tokens.weight"]
    stacks = P.layer_stacks(names)
    assert stacks == {"model.layers": 5}
    assert P.resolve(0.3, names[2], stacks) == 0.3
    grad = [0.0, 1.0]
    assert [P.resolve(grad, n, stacks) for n in names[:5]] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert P.resolve([0.0, 0.5, 0.0], names[1], stacks) == pytest.approx(0.25)
    # outside stacks: the first value (mergekit plans embeddings and the final norm with t = 0)
    assert P.resolve([0.2, 1.0], "model.embed_tokens.weight", stacks) == pytest.approx(0.2)
    assert P.resolve([0.2, 1.0], "model.layers.0.mlp.weight", {"model.layers": 1}) == pytest.approx(1.0)  # one layer: t=1
    assert P.resolve([{"filter": "mlp", "value": 0.9}, {"filter": "*", "value": 0.3}], names[0], stacks) == 0.3
    filters = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.9}, {"value": 0.1}]
    assert P.resolve(filters, names[4], stacks) == 1.0
    assert P.resolve(filters, "model.layers.0.mlp.up_proj.weight", stacks) == 0.9
    assert P.resolve(filters, "lm_head.weight", stacks) == 0.1
    assert P.resolve([{"filter": "mlp", "value": 0.9}], "lm_head.weight", stacks, default=0.4) == 0.4


@pytest.mark.parametrize("name, value, message", [
    ("density", 1.5, r"parameters.density: density must lie in \[0.0, 1.0\]"),
    ("weight", "heavy", "expected a number"),
    ("weight", [], "empty gradient"),
    ("weight", [{"filtr": "mlp", "value": 1}], r"parameters.weight\[0\]: a filter entry"),
    ("normalize", 1, "normalize must be true or false"),
    ("t", [{"filter": "mlp", "value": [0.2, 3.0]}], r"parameters.t\[0\].value\[1\]: t must lie in"),
])
def test_bad_parameter_values_name_the_key(name, value, message):
    with pytest.raises(ConfigError, match=message):
        P.check_value(name, value, f"parameters.{name}")


def test_resolver_uses_model_values_then_global_defaults_then_builtins():
    resolver = P.ParamResolver([{"weight": 2.0}, {}], {"weight": [{"filter": "mlp", "value": 0.5}], "density": 0.4,
                                                        "scaling": 1.5},
                               ["model.layers.0.mlp.w", "model.layers.1.attn.w"], seed=3)
    p = resolver("model.layers.0.mlp.w")
    assert p.weights == [2.0, 0.5] and p.densities == [0.4, 0.4] and p.scaling == 1.5
    assert resolver("model.layers.1.attn.w").weights == [2.0, 1.0]  # no filter matched: built-in 1.0
    assert resolver("model.layers.0.mlp.w").seed == p.seed != resolver("model.layers.1.attn.w").seed
