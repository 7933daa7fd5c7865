"""MEMIT: the batch update solves its normal equations, reaches the target states, and edits every family."""

import pytest
import torch

from mmadapt.editing.memit import MemitHParams, apply_memit, memit_update
from mmadapt.editing.requests import parse_requests
from mmadapt.editing.spec import spec_for
from mmadapt.editing.stats import StatsConfig
from mmadapt.editing.tokens import score_targets
from mmadapt.editing.value import module_io_at_subject
from edit_helpers import FAMILIES, tiny_model

REQUESTS = [{"prompt": "the tower of {}", "subject": "alba", "target_new": "rome", "target_true": "paris"},
            {"prompt": "the castle of {}", "subject": "cimo", "target_new": "oslo", "target_true": "rome"}]


def test_memit_update_solves_the_normal_equations():
    g = torch.Generator().manual_seed(0)
    keys, resid = torch.randn(5, 12, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    a = torch.randn(40, 12, generator=g, dtype=torch.float64)
    cov = a.T @ a / 40
    update = memit_update(keys, resid, cov, weight=3.0)  # [7, 12]
    k, r = keys.T, resid.T
    # ΔW (λC + K Kᵀ) = R Kᵀ: the minimiser of λ tr(ΔW C ΔWᵀ) + Σ ||ΔW kᵢ - rᵢ||²
    assert torch.allclose(update @ (3.0 * cov + k @ k.T), r @ k.T, atol=1e-9)
    # with almost no weight on preserving other keys, every residual is written exactly
    assert torch.allclose(memit_update(keys, resid, cov, weight=1e-9) @ k, r, atol=1e-5)


def test_memit_reaches_its_target_states(word_tok, corpus_file, tmp_path):
    """One layer, z at that layer, no prefixes, λ ≈ 0: the residual stream at each subject becomes z exactly."""
    model = tiny_model("llama", vocab_size=len(word_tok), layers=2, hidden=32)
    requests = parse_requests(REQUESTS)
    hp = MemitHParams(layers=[1], num_prefixes=0, mom2_update_weight=1e-6, ridge=0.0, clamp_norm_factor=10.0,
                      v_weight_decay=0.05, stats=StatsConfig(corpus=str(corpus_file), cache_dir=str(tmp_path)))
    result = apply_memit(model, word_tok, requests, hp)
    reached = module_io_at_subject(model, word_tok, spec_for(model).layer_name(1), requests, [""])[1]
    targets = result.details["targets"]
    assert torch.allclose(reached, targets, rtol=1e-3, atol=1e-3 * float(targets.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_memit_edits_every_family(family, word_tok, corpus_file, tmp_path):
    model = tiny_model(family, vocab_size=len(word_tok))
    requests = parse_requests(REQUESTS)
    pairs = [(r.text, r.target_new) for r in requests] + [(r.text, r.target_true) for r in requests]
    before = score_targets(model, word_tok, pairs)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = MemitHParams(layers=[0, 1], num_prefixes=0, v_steps=40, clamp_norm_factor=10.0, v_weight_decay=0.05,
                      mom2_update_weight=10.0, stats=StatsConfig(corpus=str(corpus_file), cache_dir=str(tmp_path)))
    result = apply_memit(model, word_tok, requests, hp)
    spec = spec_for(model)
    names = [spec.weight_name(0), spec.weight_name(1)]
    assert sorted(result.deltas) == sorted(names)
    assert sorted(n for n, p in model.named_parameters() if not torch.equal(p, params[n])) == sorted(names)
    after = score_targets(model, word_tok, pairs)
    assert torch.all(after[:2] > before[:2] + 1.0), (before, after)  # both new targets rose by more than 1 nat
    assert torch.all(after[:2] > after[2:])  # and beat the old answers
