"""The Connector contract over every registered connector name: shapes, num_tokens, gradients, state dicts,
learning a small mapping, and a save/load round trip through a tiny MultimodalLM."""

from __future__ import annotations

import pytest
import torch

from mmadapt import registry
from mmadapt.errors import ConfigError
from mmadapt.interfaces import Connector

IN_DIM, OUT_DIM, N = 24, 40, 16  # N: a 4x4 grid of patch tokens

TINY_QFORMER = {"name": "qformer", "num_query_tokens": 6, "num_layers": 2, "hidden_size": 32, "num_heads": 2,
                "intermediate_size": 64}
TINY_RESAMPLER = {"name": "resampler", "num_latents": 6, "depth": 2, "hidden_size": 32, "num_heads": 4, "head_dim": 8,
                  "num_kv_heads": 2}
TEST_CASES: list[tuple[str, dict]] = [
    ("linear", {"name": "linear"}),
    ("linear_avg", {"name": "linear", "pool": "avg"}),
    ("mlp", {"name": "mlp"}),
    ("mlp_depth3", {"name": "mlp", "depth": 3, "hidden_dim": 48}),
    ("mlp_pixel_shuffle", {"name": "mlp", "pool": "pixel_shuffle", "factor": 2}),
    ("mlp_avg4", {"name": "mlp", "pool": "avg", "factor": 4}),
    ("qformer", {**TINY_QFORMER, "cross_attention_every": 1}),
    ("qformer_every2", {**TINY_QFORMER, "cross_attention_every": 2}),
    ("resampler", TINY_RESAMPLER),
]
EXPECTED_TOKENS = {"linear": 16, "linear_avg": 4, "mlp": 16, "mlp_depth3": 16, "mlp_pixel_shuffle": 4, "mlp_avg4": 1,
                   "qformer": 6, "qformer_every2": 6, "resampler": 6}
CASES = [pytest.param(spec, id=case_id) for case_id, spec in TEST_CASES]


def build(spec, in_dim=IN_DIM, out_dim=OUT_DIM):
    return registry.build("connector", spec, where="connector", in_dim=in_dim, out_dim=out_dim)


@pytest.mark.parametrize("name", registry.names("connector"))
def test_every_registered_connector_has_a_case(name):
    assert any(spec["name"] == name for _, spec in TEST_CASES)


@pytest.mark.parametrize("case_id, spec", TEST_CASES, ids=[c for c, _ in TEST_CASES])
def test_shapes_num_tokens_and_gradients(case_id, spec):
    connector = build(spec)
    assert isinstance(connector, Connector)
    features = torch.randn(3, N, IN_DIM, requires_grad=True)
    out = connector(features)
    assert connector.num_tokens(N) == EXPECTED_TOKENS[case_id]
    assert out.shape == (3, connector.num_tokens(N), OUT_DIM)
    out.square().mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    dead = [n for n, p in connector.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("spec", CASES)
def test_state_dict_round_trip_and_batch_independence(spec):
    connector = build(spec).eval()
    torch.manual_seed(1)
    other = build(spec).eval()
    features = torch.randn(2, N, IN_DIM)
    with torch.no_grad():
        assert not torch.allclose(other(features), connector(features))
        other.load_state_dict(connector.state_dict())
        torch.testing.assert_close(other(features), connector(features))
        torch.testing.assert_close(connector(features[:1]), connector(features)[:1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spec", CASES)
def test_learns_a_mapping_that_depends_on_the_features(spec):
    """The mean output token must come to equal a fixed linear map of the mean feature: every connector has to
    read its input for that (queries and latents through cross-attention), so a connector that ignores it fails."""
    torch.manual_seed(0)
    connector = build(spec)
    target_map = torch.randn(IN_DIM, OUT_DIM) / IN_DIM**0.5
    optimizer = torch.optim.Adam(connector.parameters(), lr=1e-2)

    def features(batch):  # a per-sample signal shared by the tokens, plus per-token noise
        return torch.randn(batch, 1, IN_DIM) + 0.5 * torch.randn(batch, N, IN_DIM)

    def loss_on(x):
        return (connector(x).mean(dim=1) - x.mean(dim=1) @ target_map).square().mean()

    held_out = features(32)
    with torch.no_grad():
        before = loss_on(held_out).item()
    for _ in range(80):
        optimizer.zero_grad()
        loss_on(features(16)).backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_on(held_out).item()
    constant = (held_out.mean(dim=1) @ target_map).var(dim=0).mean().item()  # the best input-independent answer
    assert after < 0.3 * min(before, constant), (before, after, constant)


@pytest.mark.parametrize("spec", [TINY_QFORMER, TINY_RESAMPLER], ids=["qformer", "resampler"])
def test_query_connectors_take_any_number_of_features(spec):
    connector = build(spec).eval()
    for n in (1, 7, 50):
        assert connector(torch.randn(2, n, IN_DIM)).shape == (2, connector.num_tokens(n), OUT_DIM)
        assert connector.num_tokens(n) == 6
    out = connector(torch.randn(1, 9, IN_DIM))
    assert not torch.allclose(out[:, 0], out[:, 1])  # distinct queries / latents, not one token repeated


@pytest.mark.parametrize("spec, key", [
    ({"name": "mlp", "pool": "max"}, "pool"),
    ({"name": "mlp", "factor": 0}, "factor"),
    ({"name": "qformer", "hidden_size": 30, "num_heads": 4}, "divisible"),
    ({"name": "qformer", "cross_attention_every": 0}, "cross_attention_every"),
    ({"name": "resampler", "num_heads": 6, "num_kv_heads": 4}, "num_kv_heads"),
    ({"name": "resampler", "latents": 4}, "unknown key 'connector.latents'"),
])
def test_bad_options_are_config_errors(spec, key):
    with pytest.raises(ConfigError, match=key):
        build(spec)


@pytest.mark.parametrize("spec", CASES)
def test_round_trip_through_multimodal_lm(spec, tmp_path):
    """num_media_tokens follows the connector; generation runs; a saved model reloads to the same logits."""
    from mmadapt.config import LLMConfig, ModelConfig
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    train_word_tokenizer(["what is in the picture ? a red square"], out_dir=tmp_path / "tokenizer")
    config = ModelConfig(llm=LLMConfig(config=tiny_llm_config(hidden=32, heads=2), tokenizer=str(tmp_path / "tokenizer")),
                         encoders={"image": tiny_vit_encoder(image_size=32, patch_size=8, width=24)},
                         connectors={"image": spec})
    model = MultimodalLM.from_config(config).eval()
    n_tokens = model.num_media_tokens("image")
    assert n_tokens == model.connectors["image"].num_tokens(16)
    text = model.tokenizer("what is in the picture ?")["input_ids"]
    placeholder = [model.placeholder_id("image")] * n_tokens
    input_ids = torch.tensor([placeholder + text, text + placeholder])  # an image at the start and at the end
    media = {"image": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        logits = model(input_ids, media=media).logits
        new = model.generate(input_ids, media=media, max_new_tokens=3, do_sample=False)
    assert new.shape == (2, 3)
    model.save_pretrained(tmp_path / "checkpoint")
    loaded = MultimodalLM.from_pretrained(tmp_path / "checkpoint").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids, media=media).logits, logits)


def test_a_class_token_left_in_is_a_clear_error():
    connector = build({"name": "mlp", "pool": "pixel_shuffle"})
    with pytest.raises(ConfigError, match=r"square grid of patch tokens, got N=17 .*drop_cls: true"):
        connector.num_tokens(17)
    with pytest.raises(ConfigError, match="6x6 token grid is not divisible by factor=4"):
        build({"name": "mlp", "pool": "avg", "factor": 4}).num_tokens(36)
