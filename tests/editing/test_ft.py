"""FT-L: only the chosen projection moves, within ±ε of its original weights, and the target gets likelier."""

import torch

from mmadapt.editing.ft import FTHParams, apply_ft
from mmadapt.editing.requests import parse_requests
from mmadapt.editing.tokens import score_targets
from edit_helpers import tiny_model


def test_ft_is_constrained_and_learns(word_tok):
    model = tiny_model("gpt2", vocab_size=len(word_tok))
    requests = parse_requests([{"prompt": "the tower of {}", "subject": "alba", "target_new": "rome"}])
    before = score_targets(model, word_tok, [(requests[0].text, "rome")])
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = apply_ft(model, word_tok, requests, FTHParams(layer=1, lr=1e-2, steps=20, norm_constraint=0.02))
    name = "transformer.h.1.mlp.c_proj.weight"
    assert [n for n, p in model.named_parameters() if not torch.equal(p, params[n])] == [name]
    change = model.get_parameter(name).detach() - params[name]
    assert change.abs().max() <= 0.02 + 1e-6 and change.abs().max() > 0.01  # the bound is reached, never exceeded
    assert torch.allclose(result.deltas[name], change, atol=1e-6)
    after = score_targets(model, word_tok, [(requests[0].text, "rome")])
    assert after[0] > before[0] + 0.5
    assert result.metrics["nll_after"] < result.metrics["nll_before"]
