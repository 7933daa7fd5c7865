"""Backend-specific behaviour of the open_clip and Hugging Face vision towers: layers, CLS, weights, preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from encoder_cases import TINY_TEXT_CFG, save_hf_tower, tiny_openclip_resnet, tiny_openclip_vit
from PIL import Image

from mmadapt import registry
from mmadapt.errors import ConfigError


def build(spec):
    return registry.build("encoder", spec).eval()


def solid(colour=(200, 100, 50), size=(20, 30)):
    return Image.new("RGB", size, colour)


# ----------------------------------------------------------------------------------------------- HF towers
@pytest.mark.parametrize("layer, index", [(-1, -1), (-2, -2), (0, 1)])
def test_hf_clip_layer_is_a_block_index_and_the_class_token_is_dropped(tmp_path, layer, index):
    path = save_hf_tower(tmp_path, "clip")
    encoder = build({"name": "hf_vision", "name_or_path": str(path), "layer": layer})
    with_cls = build({"name": "hf_vision", "name_or_path": str(path), "layer": layer, "drop_cls": False})
    pixels = encoder.preprocess(solid())[None]
    with torch.no_grad():
        states = encoder.model(pixel_values=pixels, output_hidden_states=True).hidden_states  # (embeddings, blocks...)
        torch.testing.assert_close(encoder(pixels), states[index][:, 1:])
        with_cls.load_state_dict(encoder.state_dict())
        torch.testing.assert_close(with_cls(pixels), states[index])
    assert (encoder.num_features, with_cls.num_features, encoder.hidden_size) == (16, 17, 32)


def test_hf_siglip_has_no_class_token(tmp_path):
    spec = {"name": "hf_vision", "name_or_path": str(save_hf_tower(tmp_path, "siglip"))}
    assert build(spec).num_features == build({**spec, "drop_cls": False}).num_features == 16


def test_hf_full_dual_encoder_checkpoint_loads_its_vision_tower(tmp_path):
    from transformers import CLIPModel

    path = save_hf_tower(tmp_path, "clip", full=True)
    encoder = build({"name": "hf_vision", "name_or_path": str(path)})
    assert type(encoder.model).__name__ == "CLIPVisionModel"
    full = CLIPModel.from_pretrained(path)
    pixels = encoder.preprocess(solid())[None]
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
        torch.testing.assert_close(encoder(pixels), expected)


def test_hf_preprocessing_is_the_saved_image_processor(tmp_path):
    from transformers import AutoImageProcessor

    path = save_hf_tower(tmp_path, "clip")
    encoder = build({"name": "hf_vision", "name_or_path": str(path)})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8))
    expected = AutoImageProcessor.from_pretrained(path)(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(encoder.preprocess(image), expected)
    assert expected.shape == (3, 32, 32)


def test_hf_errors_name_the_problem(tmp_path):
    path = save_hf_tower(tmp_path, "clip")
    with pytest.raises(ConfigError, match=r"layer=2 is out of range; valid: -2 to 1"):
        build({"name": "hf_vision", "name_or_path": str(path), "layer": 2})
    (path / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="no image processor found"):
        build({"name": "hf_vision", "name_or_path": str(path)})
    with pytest.raises(ConfigError, match="cannot load its config"):
        build({"name": "hf_vision", "name_or_path": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="unknown key 'layers'"):
        build({"name": "hf_vision", "name_or_path": str(path), "layers": 1})


# ----------------------------------------------------------------------------------------------- open_clip
def test_openclip_layers_class_token_and_resnet_grid():
    last = build(tiny_openclip_vit())
    assert (last.num_features, last.hidden_size) == (16, 32)  # a 4x4 grid of 8-pixel patches of a 32-pixel image
    first = build(tiny_openclip_vit(layer=0, drop_cls=False))
    assert first.num_features == 17
    first.load_state_dict(last.state_dict())
    pixels = last.preprocess(solid())[None]
    with torch.no_grad():
        assert not torch.allclose(first(pixels)[:, 1:], last(pixels))
        # the same weights, the first block's output computed by hand: embeddings then block 0
        x = first.visual._embeds(pixels)
        torch.testing.assert_close(first(pixels), first.visual.transformer.resblocks[0](x))
    resnet = build(tiny_openclip_resnet())
    assert (resnet.num_features, resnet.hidden_size) == (4, 256)  # 64 px / 32 stride -> 2x2 grid, no class token


def test_openclip_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="layer=7"):
        build(tiny_openclip_vit(layer=7))
    with pytest.raises(ConfigError, match="'ViT-Nope' is unknown"):
        build({"name": "openclip", "model_name": "ViT-Nope"})
    with pytest.raises(ConfigError, match="not a known tag or valid file path"):
        build({**tiny_openclip_vit(), "pretrained": str(tmp_path / "missing.safetensors")})


def test_openclip_local_checkpoint_file_is_loaded(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    spec = tiny_openclip_vit()
    reference = open_clip.create_model("ViT-B-32", **spec["model_overrides"])
    save_file(reference.state_dict(), str(tmp_path / "clip.safetensors"))
    encoder = build({**spec, "pretrained": str(tmp_path / "clip.safetensors")})
    for name, tensor in encoder.visual.state_dict().items():
        torch.testing.assert_close(tensor, reference.visual.state_dict()[name])


def test_openclip_preprocessing_follows_the_model_and_survives_a_checkpoint(tmp_path):
    """A model folder's own mean/std (as a pretrained tag sets them) is used, and saved by reload_spec."""
    model_dir = tmp_path / "export"
    model_dir.mkdir()
    vision_cfg = tiny_openclip_vit()["model_overrides"]["vision_cfg"]
    model_cfg = {"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": TINY_TEXT_CFG}
    (model_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    encoder = build({"name": "openclip", "model_name": str(model_dir)})
    pixels = encoder.preprocess(solid((255, 0, 51)))
    assert pixels.shape == (3, 32, 32)
    expected = (torch.tensor([1.0, 0.0, 0.2]) - 0.5) / 0.25
    torch.testing.assert_close(pixels.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)

    spec = encoder.reload_spec({"name": "openclip", "model_name": str(model_dir)}, tmp_path / "checkpoint", "image")
    assert spec["model_name"] == "@checkpoint/encoders/image"
    reloaded = build({**spec, "model_name": str(tmp_path / "checkpoint" / "encoders" / "image")})
    torch.testing.assert_close(reloaded.preprocess(solid((255, 0, 51))), pixels)
    assert reloaded.num_features == encoder.num_features
