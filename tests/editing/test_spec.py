"""Per-architecture specs: every supported family's templates name real modules; others get a clear error."""

import pytest
import torch

from mmadapt.editing.spec import check_layers, default_memit_layers, default_rome_layer, get_spec, spec_for, supported
from mmadapt.errors import ConfigError
from edit_helpers import FAMILIES, tiny_model


def test_supported_families_are_the_documented_ones():
    assert set(FAMILIES) == set(supported())


@pytest.mark.parametrize("family", FAMILIES)
def test_templates_name_modules_and_weight_layout(family):
    model = tiny_model(family, vocab_size=50, layers=3)
    spec = spec_for(model)
    modules = dict(model.named_modules())
    for layer in range(3):
        for name in (spec.layer_name(layer), spec.mlp_name(layer), spec.attn_name(layer), spec.rewrite_name(layer)):
            assert name in modules, name
    weight = model.get_parameter(spec.weight_name(1))
    matrix = spec.to_out_in(weight)  # [d_model, d_ff]: the projection maps MLP units back to the residual stream
    hidden = model.get_input_embeddings().embedding_dim
    assert matrix.shape[0] == hidden and matrix.shape[1] > hidden
    update = torch.randn_like(matrix)
    assert spec.from_out_in(update).shape == weight.shape
    x = torch.randn(2, matrix.shape[1])
    assert torch.allclose(model.get_submodule(spec.rewrite_name(1))(x) - model.get_submodule(spec.rewrite_name(1))(torch.zeros_like(x)),
                          x @ matrix.T, atol=1e-5)


def test_unsupported_family_names_the_supported_ones_and_what_to_add():
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("opt", vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                                  ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ConfigError) as err:
        spec_for(model)
    message = str(err.value)
    assert "'opt'" in message and "SPECS" in message
    for family in FAMILIES:
        assert family in message


def test_override_spec_for_an_unlisted_family():
    spec = get_spec("opt", {"layer": "model.decoder.layers.{}", "mlp": "model.decoder.layers.{}", "attn": "model.decoder.layers.{}.self_attn",
                            "rewrite": "model.decoder.layers.{}.fc2", "embed": "model.decoder.embed_tokens"})
    assert spec.weight_name(3) == "model.decoder.layers.3.fc2.weight"
    with pytest.raises(ConfigError, match="keys"):
        get_spec("opt", {"layer": "x.{}"})
    good = {"layer": "l.{}", "mlp": "l.{}.mlp", "attn": "l.{}.attn", "rewrite": "l.{}.mlp.out", "embed": "e"}
    for key, bad in (("layer", "l.{i}"), ("mlp", "l.mlp"), ("rewrite", "l.{"), ("attn", 3)):
        with pytest.raises(ConfigError, match=f"{key}=.*'{{}}' where the layer index goes"):
            get_spec("opt", {**good, key: bad})


def test_layer_checks():
    model = tiny_model("llama", vocab_size=50, layers=4)
    assert check_layers(model, [-1, 0], "layers") == [0, 3]
    with pytest.raises(ConfigError, match="out of range"):
        check_layers(model, [4], "layers")
    with pytest.raises(ConfigError, match="repeated"):
        check_layers(model, [1, -3], "layers")
    assert 0 <= default_rome_layer(model) < 4
    assert all(0 <= layer < 4 for layer in default_memit_layers(model))
