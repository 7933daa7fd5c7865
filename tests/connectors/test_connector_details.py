"""Connector specifics: token-reduction math, Q-Former cross-attention placement and BERT initialisation."""

from __future__ import annotations

import pytest
import torch

from mmadapt import registry
from mmadapt.connectors.projector import reduce_tokens
from mmadapt.errors import ConfigError

QFORMER = {"name": "qformer", "num_query_tokens": 4, "num_layers": 2, "hidden_size": 32, "num_heads": 2,
           "intermediate_size": 64}


def build(spec, in_dim=8, out_dim=16):
    return registry.build("connector", spec, in_dim=in_dim, out_dim=out_dim)


# ----------------------------------------------------------------------------------------------- token reduction
def test_avg_pool_averages_each_neighbourhood():
    grid = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 4, 4, 3)  # [B, row, col, D]
    pooled = reduce_tokens(grid.reshape(2, 16, 3), "avg", 2)
    assert pooled.shape == (2, 4, 3)
    top_right = grid[:, 0:2, 2:4].reshape(2, 4, 3).mean(dim=1)  # output token 1: rows 0-1, columns 2-3
    torch.testing.assert_close(pooled[:, 1], top_right)


def test_pixel_shuffle_concatenates_each_neighbourhood_row_major():
    grid = torch.randn(2, 4, 4, 3)
    shuffled = reduce_tokens(grid.reshape(2, 16, 3), "pixel_shuffle", 2)
    assert shuffled.shape == (2, 4, 12)
    bottom_left = torch.cat([grid[:, 2, 0], grid[:, 2, 1], grid[:, 3, 0], grid[:, 3, 1]], dim=-1)  # output token 2
    torch.testing.assert_close(shuffled[:, 2], bottom_left)
    assert torch.equal(reduce_tokens(grid.reshape(2, 16, 3), "none", 2), grid.reshape(2, 16, 3))


def test_pooled_projector_is_the_projection_of_the_pooled_tokens():
    linear = build({"name": "linear", "pool": "avg", "factor": 2})
    features = torch.randn(3, 16, 8)
    expected = linear.proj(reduce_tokens(features, "avg", 2))
    torch.testing.assert_close(linear(features), expected)
    mlp = build({"name": "mlp", "pool": "pixel_shuffle", "factor": 2})
    assert mlp.mlp[0].in_features == 8 * 4  # pixel shuffle widens the tokens by factor**2
    assert mlp.num_tokens(64) == 16 and build({"name": "mlp", "pool": "avg", "factor": 4}).num_tokens(64) == 4


def test_pooling_a_grid_that_does_not_fit_is_an_error():
    with pytest.raises(ConfigError, match=r"got N=10"):
        reduce_tokens(torch.randn(1, 10, 8), "avg", 2)
    with pytest.raises(ConfigError, match="not divisible by factor=2"):
        build({"name": "linear", "pool": "pixel_shuffle"})(torch.randn(1, 9, 8))


# ----------------------------------------------------------------------------------------------- Q-Former
@pytest.mark.parametrize("every, expected", [(1, [0, 1, 2, 3]), (2, [0, 2]), (3, [0, 3])])
def test_cross_attention_every_kth_layer(every, expected):
    qformer = build({**QFORMER, "num_layers": 4, "cross_attention_every": every})
    layers = qformer.qformer.encoder.layer
    assert [i for i, layer in enumerate(layers) if hasattr(layer, "crossattention")] == expected
    assert layers[expected[0]].crossattention.attention.key.in_features == 8  # keys and values read the features


def test_queries_read_the_features():
    qformer = build(QFORMER).eval()
    features = torch.randn(1, 12, 8)
    with torch.no_grad():
        base = qformer(features)
        changed = features.clone()
        changed[:, 5] = torch.randn(8)  # one feature token changes: every query output moves
        assert (qformer(changed) - base).abs().amax(dim=-1).min() > 0


def save_tiny_bert(path, layers=3, hidden=32, heads=2, intermediate=64):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=intermediate, hidden_act="gelu_new", layer_norm_eps=1e-6))
    bert.save_pretrained(path)
    return bert


def test_init_from_a_bert_checkpoint_copies_self_attention_and_feed_forward(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert")
    torch.manual_seed(1)
    qformer = build({**QFORMER, "init_from": str(tmp_path / "bert")})
    ours, theirs = qformer.qformer.state_dict(), bert.state_dict()
    pairs = {
        "layernorm.weight": "embeddings.LayerNorm.weight",
        "encoder.layer.1.attention.attention.value.weight": "encoder.layer.1.attention.self.value.weight",
        "encoder.layer.0.attention.output.LayerNorm.bias": "encoder.layer.0.attention.output.LayerNorm.bias",
        "encoder.layer.1.intermediate_query.dense.weight": "encoder.layer.1.intermediate.dense.weight",
        "encoder.layer.0.output_query.dense.bias": "encoder.layer.0.output.dense.bias",
    }
    for key, source in pairs.items():
        torch.testing.assert_close(ours[key], theirs[source])
    # cross-attention has no BERT counterpart and stays random; BERT's third layer is not used
    assert not torch.equal(ours["encoder.layer.0.crossattention.attention.query.weight"],
                           theirs["encoder.layer.0.attention.self.query.weight"])
    assert qformer.qformer.config.hidden_act == "gelu_new" and qformer.qformer.config.layer_norm_eps == 1e-6
    assert qformer(torch.randn(2, 5, 8)).shape == (2, 4, 16)


def test_init_from_errors_name_the_mismatch(tmp_path):
    save_tiny_bert(tmp_path / "bert", layers=2, hidden=48, heads=2, intermediate=64)
    with pytest.raises(ConfigError, match=r"hidden_size=32 \(checkpoint: 48\)"):
        build({**QFORMER, "init_from": str(tmp_path / "bert")})
    with pytest.raises(ConfigError, match="num_layers=3 but the checkpoint has 2 layers"):
        build({**QFORMER, "hidden_size": 48, "num_layers": 3, "init_from": str(tmp_path / "bert")})
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="not a BERT-family encoder"):
        build({**QFORMER, "init_from": str(tmp_path / "gpt2")})
    with pytest.raises(ConfigError, match="cannot load it"):
        build({**QFORMER, "init_from": str(tmp_path / "missing")})


# ----------------------------------------------------------------------------------------------- positions
@pytest.mark.parametrize("spec", [QFORMER, {"name": "resampler", "num_latents": 3, "depth": 1, "num_heads": 2,
                                            "head_dim": 8, "num_kv_heads": 1}], ids=["qformer", "resampler"])
def test_query_connectors_know_where_a_feature_was_unless_told_not_to(spec):
    features = torch.randn(2, 6, 8)
    swapped = features[:, [1, 0, 2, 3, 4, 5]]  # the same features, the first two swapped

    def trained_like(connector):  # fresh queries attend almost uniformly, which averages any order away
        for param in connector.parameters():
            param.add_(0.5 * torch.randn_like(param))
        return connector.eval()

    with torch.no_grad():
        as_set = trained_like(build({**spec, "positions": "none"}))
        torch.testing.assert_close(as_set(swapped), as_set(features))  # attention alone is blind to order
        ordered = trained_like(build(spec))  # default: sinusoidal positions
        assert not torch.allclose(ordered(swapped), ordered(features), atol=1e-3)
    with pytest.raises(ConfigError, match="positions"):
        build({**spec, "positions": "rope"})
