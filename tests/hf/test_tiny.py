"""Tiny local checkpoints of the four HF VLM families: plain transformers loads them offline and runs them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmadapt.errors import ConfigError
from mmadapt.hf.tiny import FAMILIES, save_tiny_vlm

HF_CLASSES = {"llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
              "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
              "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
              "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor")}


def picture(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def user(*parts):
    return {"role": "user", "content": [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]}


# name -> (messages, images): non-square images of different sizes, so tiling and dynamic resolution differ
CONVERSATIONS = {
    "text_only": ([user("hello world")], []),
    "one_image": ([user(None, "what colour is the shape ?")], [picture(20, 28, 0)]),
    "two_images": ([user(None, None, "compare the two images")], [picture(20, 28, 0), picture(40, 24, 1)]),
    "multi_turn": ([user(None, "what colour is the shape ?"),
                    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                    user("where is it ?")], [picture(30, 30, 2)]),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    """(family, model, processor) reloaded by path with the Auto classes (the hub is offline: conftest)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = request.param
    path = save_tiny_vlm(family, tmp_path_factory.mktemp(family) / "ckpt")
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    return family, model, AutoProcessor.from_pretrained(str(path))


def run(family, model, processor, messages, images):
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    kwargs = {}
    if images:  # Idefics3's processor takes one list of images per text
        kwargs["images"] = [images] if family == "idefics3" else images
    inputs = processor(text=[text], return_tensors="pt", **kwargs)
    with torch.no_grad():
        return inputs, model(**inputs).logits


def test_the_family_classes_load_and_the_tokenizer_round_trips(checkpoint):
    family, model, processor = checkpoint
    assert (type(model).__name__, type(processor).__name__) == HF_CLASSES[family]
    tokenizer = processor.tokenizer
    text = "what colour is the shape ? zebra 42"  # words outside the corpus still tokenize (byte-level)
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    for token in FAMILIES[family].special_tokens:  # each special token is one id, never split
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    config = model.config
    assert config.text_config.hidden_size == 32 and config.text_config.num_hidden_layers == 2


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_and_processor_feed_the_model(checkpoint, name):
    family, model, processor = checkpoint
    messages, images = CONVERSATIONS[name]
    inputs, logits = run(family, model, processor, messages, images)
    ids = inputs["input_ids"]
    assert logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    image_id = model.config.image_token_id
    expanded = int((ids == image_id).sum())
    assert (expanded > 0) == bool(images)  # the template placed the image markup; the processor expanded it
    assert expanded >= 2 * len(images)  # each image takes several positions, not one marker
    if images:
        # an image changes the logits of the text around it: the vision path is wired in, not ignored
        shuffled = [picture(img.height, img.width, 99 + i) for i, img in enumerate(images)]
        _, other = run(family, model, processor, messages, shuffled)
        assert not torch.allclose(logits, other)


def test_two_image_sizes_expand_differently_where_the_family_tiles(checkpoint):
    """AnyRes (llava_next), dynamic resolution (qwen2_5_vl) and splitting (idefics3) give a wide strip fewer tokens
    than a large square image; LLaVA-1.5 resizes both to one crop."""
    family, model, processor = checkpoint
    messages = [user(None, "hello")]
    small, _ = run(family, model, processor, messages, [picture(12, 40, 0)])
    large, _ = run(family, model, processor, messages, [picture(40, 40, 0)])
    count = [int((x["input_ids"] == model.config.image_token_id).sum()) for x in (small, large)]
    assert (count[0] < count[1]) == (family != "llava"), count


def test_generate_runs_on_an_image_conversation(checkpoint):
    family, model, processor = checkpoint
    messages, images = CONVERSATIONS["one_image"]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[images] if family == "idefics3" else images, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert out[0, : inputs["input_ids"].shape[1]].tolist() == inputs["input_ids"][0].tolist()


def test_seed_decides_the_weights_and_overrides_the_sizes(tmp_path):
    from safetensors.torch import load_file

    a = load_file(str(save_tiny_vlm("llava", tmp_path / "a", seed=1) / "model.safetensors"))
    b = load_file(str(save_tiny_vlm("llava", tmp_path / "b", seed=1) / "model.safetensors"))
    c = load_file(str(save_tiny_vlm("llava", tmp_path / "c", seed=2, hidden=64) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    embeddings = [v for k, v in c.items() if k.endswith("embed_tokens.weight")]
    assert config["text_config"]["hidden_size"] == 64 and [e.shape[1] for e in embeddings] == [64]


def test_unknown_family_or_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown family 'blip2'; valid: llava, llava_next, qwen2_5_vl, idefics3"):
        save_tiny_vlm("blip2", tmp_path)
    with pytest.raises(ConfigError, match="unknown size 'width'; valid: hidden, layers"):
        save_tiny_vlm("llava", tmp_path, width=8)
