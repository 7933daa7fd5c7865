"""ROME: the rank-one update writes v* at k* exactly, leaves C-orthogonal keys alone, and edits every family."""

import pytest
import torch

from mmadapt.editing.requests import parse_requests
from mmadapt.editing.rome import RomeHParams, apply_rome, rank_one_update
from mmadapt.editing.spec import spec_for
from mmadapt.editing.stats import StatsConfig
from mmadapt.editing.tokens import score_targets
from edit_helpers import FAMILIES, tiny_model

# The subject ends the prompt, so its last token is where the answer is read (as in the quickstart's catalogue).
REQUEST = {"prompt": "the tower of {}", "subject": "alba", "target_new": "rome", "target_true": "paris"}


def random_cov(d: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(4 * d, d, generator=generator, dtype=torch.float64)
    return a.T @ a / (4 * d)  # E[k kᵀ] of 4d random keys: symmetric positive definite


def test_rank_one_update_writes_the_value_at_the_key():
    g = torch.Generator().manual_seed(0)
    w, k, v = (torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64),
               torch.randn(6, generator=g, dtype=torch.float64))
    cov = random_cov(10, g)
    delta = rank_one_update(w, k, v, cov)
    assert torch.allclose((w + delta) @ k, v, atol=1e-10)
    assert torch.linalg.matrix_rank(delta) == 1
    # keys orthogonal to C⁻¹k* (uncorrelated with k* under the statistics) see no change
    u = torch.linalg.solve(cov, k)
    x = torch.randn(10, generator=g, dtype=torch.float64)
    x = x - (x @ u) / (u @ u) * u
    assert torch.allclose(delta @ x, torch.zeros(6, dtype=torch.float64), atol=1e-10)
    # a separate direction (ROME's prefix-averaged key) still writes the value exactly at the key
    d = k + 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    assert torch.allclose((w + rank_one_update(w, k, v, cov, direction=d)) @ k, v, atol=1e-10)


def test_rank_one_update_without_statistics_is_the_minimum_norm_update():
    g = torch.Generator().manual_seed(1)
    w, k, v = torch.randn(4, 5, generator=g), torch.randn(5, generator=g), torch.randn(4, generator=g)
    delta = rank_one_update(w, k, v)
    residual = v.double() - w.double() @ k.double()
    expected = torch.outer(residual, torch.linalg.pinv(k.double().unsqueeze(1)).squeeze(0))  # r k⁺: the least-norm ΔW with ΔW k = r
    assert torch.allclose(delta, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_rome_edits_every_family(family, word_tok, corpus_file, tmp_path):
    model = tiny_model(family, vocab_size=len(word_tok))
    requests = parse_requests([REQUEST])
    text = requests[0].text
    before = score_targets(model, word_tok, [(text, "rome"), (text, "paris")])
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    # random weights need larger shifts than a trained model (a looser norm bound and decay), and their sampled
    # prefixes are noise, so the value is fitted on the edit prompt alone
    hp = RomeHParams(layer=0, clamp_norm_factor=10.0, v_weight_decay=0.05, num_prefixes=0, v_steps=40,
                     stats=StatsConfig(corpus=str(corpus_file), cache_dir=str(tmp_path / "stats")))
    result = apply_rome(model, word_tok, requests, hp)

    spec = spec_for(model)
    name = spec.weight_name(0)
    assert list(result.deltas) == [name]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, params[n])]
    assert changed == [name]
    assert torch.allclose(model.get_parameter(name), params[name] + result.deltas[name], atol=1e-6)
    # W' k* = v*: the edited projection maps the subject's key to the optimised value
    weight = spec.to_out_in(model.get_parameter(name).detach()).double()
    key, value = result.details["keys"][0].double(), result.details["values"][0].double()
    assert torch.allclose(weight @ key, value, rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    after = score_targets(model, word_tok, [(text, "rome"), (text, "paris")])
    assert after[0] > before[0] + 1.0, (before, after)  # the new target's log-probability rose by more than 1 nat
    assert after[0] > after[1]  # efficacy: now more probable than the old answer
