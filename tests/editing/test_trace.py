"""Causal tracing: restoring the final state brings back the clean answer; the heat map is a PNG."""

import pytest
import torch

from mmadapt.editing.trace import plot_trace, trace_fact
from mmadapt.errors import ConfigError
from edit_helpers import tiny_model


def test_trace_scores_and_heat_map(word_tok, tmp_path):
    model = tiny_model("gpt2", vocab_size=len(word_tok), layers=3)
    result = trace_fact(model, word_tok, "the tower of {} is in", "alba", "rome", samples=4)
    assert result.tokens == ["the", "tower", "of", "alba", "is", "in"]
    assert result.subject == (3, 3) and result.answer == "rome"
    for kind in ("hidden", "mlp", "attn"):
        assert result.scores[kind].shape == (6, 3)
    # restoring the last block's output at the last token restores the clean distribution exactly
    assert result.scores["hidden"][-1, -1].item() == pytest.approx(result.clean, rel=1e-5)
    # tokens before the subject are unaffected by the corruption: restoring them changes nothing
    assert torch.allclose(result.scores["hidden"][:3], torch.full((3, 3), result.corrupted), rtol=1e-5)
    assert result.corrupted != pytest.approx(result.clean, rel=1e-3)
    top = result.top_layers("mlp", k=3)  # only layers that bring the answer back, best first
    assert set(top) <= {0, 1, 2} and all(result.effects("mlp")[i] > 0 for i in top)
    path = plot_trace(result, tmp_path / "trace.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 150


def test_trace_is_reproducible_and_validates(word_tok):
    model = tiny_model("llama", vocab_size=len(word_tok))
    a = trace_fact(model, word_tok, "the tower of {} is in", "alba", samples=3, kinds=("mlp",), seed=1)
    b = trace_fact(model, word_tok, "the tower of {} is in", "alba", samples=3, kinds=("mlp",), seed=1)
    assert torch.equal(a.scores["mlp"], b.scores["mlp"]) and list(a.scores) == ["mlp"]
    with pytest.raises(ConfigError, match="valid kinds"):
        trace_fact(model, word_tok, "the tower of {} is in", "alba", kinds=("residual",))
