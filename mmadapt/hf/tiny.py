"""Tiny random Hugging Face VLM checkpoints, one per supported family, built offline for tests and quickstarts.

`save_tiny_vlm(family, dir)` writes what `AutoModelForImageTextToText.from_pretrained(dir)` and
`AutoProcessor.from_pretrained(dir)` load without a hub: the family's own model class with random weights
(hidden 32, 1-2 layers, images of 16-32 px), its own processor classes configured small (LLaVA-NeXT's AnyRes
grid, Qwen2.5-VL's dynamic resolution, Idefics3's image splitting), a byte-level BPE tokenizer trained on a few
sentences with the family's special tokens, and a ChatML-like chat template that writes the family's image
markup where a message has an image part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mmadapt.errors import ConfigError

# Words the tiny tokenizer learns whole (the rest is spelled out in bytes: byte-level BPE covers any text).
CORPUS = [
    "what colour is the shape ? which shape is in the image ? where is it ? how many shapes are there ?",
    "red green blue yellow circle square triangle one two three top bottom left right",
    "the quick brown fox jumps over the lazy dog . hello world , you are a helpful assistant",
    "user assistant system describe compare the two images",
]
SIZES = {"hidden": 32, "layers": 2, "vision_layers": 1, "heads": 2, "image_size": 16}  # overridable by keyword


def chat_template(image_markup: str, end_of_turn: str = "<|im_end|>") -> str:
    """ChatML over content lists (`{"type": "image"}` -> `image_markup`, text parts verbatim) or plain strings."""
    return (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ " + repr(image_markup) + " }}{% elif part['type'] == 'text' %}"
        "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ " + repr(end_of_turn + "\n") + " }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def bpe_tokenizer(special_tokens: list[str], eos: str, vocab_size: int = 400) -> Any:
    """A Qwen2Tokenizer (byte-level BPE, the pipeline Qwen2.5-VL's auto class rebuilds on load) trained on CORPUS.

    Byte-level so any text tokenizes; the Qwen2 class for every family because transformers reloads a
    `qwen2_5_vl` checkpoint's tokenizer as Qwen2Tokenizer whatever was saved, and one kind keeps them alike.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    saved = json.loads(bpe.to_str())["model"]  # merges as pairs (or "a b" strings in older tokenizers)
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in saved["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=saved["vocab"], merges=merges, eos_token=eos, pad_token="<|endoftext|>",
                               unk_token=None)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


@dataclass(frozen=True)
class TinyFamily:
    special_tokens: tuple[str, ...]
    image_markup: str  # what the chat template writes for an image part (the processor expands it)
    build: Callable[[Any, dict[str, int]], tuple[Any, Any]]  # (tokenizer, sizes) -> (model, processor)
    end_of_turn: str = "<|im_end|>"


def _text_config(model_type: str, tokenizer: Any, s: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": len(tokenizer), "hidden_size": s["hidden"],
            "intermediate_size": 2 * s["hidden"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
            "num_key_value_heads": 1, "max_position_embeddings": 512, "tie_word_embeddings": False,
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            **extra}


def _clip(s: dict[str, int], patch: int = 8) -> dict[str, Any]:
    return {"model_type": "clip_vision_model", "hidden_size": s["hidden"], "intermediate_size": 2 * s["hidden"],
            "num_hidden_layers": s["vision_layers"], "num_attention_heads": s["heads"], "image_size": s["image_size"],
            "patch_size": patch}


def _llava(tokenizer: Any, s: dict[str, int]) -> tuple[Any, Any]:
    import transformers as tf

    side, patch = s["image_size"], 8
    config = tf.LlavaConfig(vision_config=_clip(s, patch), text_config=_text_config("llama", tokenizer, s),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                            vision_feature_select_strategy="default", image_seq_length=(side // patch) ** 2)
    images = tf.CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = tf.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return tf.LlavaForConditionalGeneration(config), processor


def _llava_next(tokenizer: Any, s: dict[str, int]) -> tuple[Any, Any]:
    import transformers as tf

    side, patch = s["image_size"], 8
    grid = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side]]  # AnyRes: 1x2, 2x1 and 2x2 tiles
    config = tf.LlavaNextConfig(vision_config=_clip(s, patch), text_config=_text_config("llama", tokenizer, s),
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=grid,
                                vision_feature_layer=-1, vision_feature_select_strategy="default",
                                image_seq_length=(side // patch) ** 2)
    images = tf.LlavaNextImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                        image_grid_pinpoints=grid)
    processor = tf.LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return tf.LlavaNextForConditionalGeneration(config), processor


def _qwen2_5_vl(tokenizer: Any, s: dict[str, int]) -> tuple[Any, Any]:
    import transformers as tf

    patch, merge = 4, 2
    half = s["hidden"] // s["heads"] // 2  # M-RoPE splits a head's rotary half into (time, height, width) sections
    spatial = (half - half // 4) // 2  # Qwen2.5-VL's 16:24:24 of 64, scaled down
    sections = [half - 2 * spatial, spatial, spatial]
    text = _text_config("qwen2_5_vl_text", tokenizer, s,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections})
    vision = {"depth": s["vision_layers"], "hidden_size": s["hidden"], "intermediate_size": 2 * s["hidden"],
              "num_heads": s["heads"], "out_hidden_size": s["hidden"], "patch_size": patch, "spatial_merge_size": merge,
              "temporal_patch_size": 2, "window_size": 2 * patch * merge, "fullatt_block_indexes": [0]}
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                           "<|vision_end|>")}
    config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                                 video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                 vision_end_token_id=ids["<|vision_end|>"])
    unit = patch * merge  # images are resized to multiples of this, between min and max pixels
    pixels = {"shortest_edge": (unit * 2) ** 2, "longest_edge": (s["image_size"] * 2) ** 2}
    images = tf.Qwen2VLImageProcessor(size=pixels, patch_size=patch, merge_size=merge, temporal_patch_size=2)
    videos = tf.Qwen2VLVideoProcessor(size=pixels, patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = tf.Qwen2_5_VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos)
    return tf.Qwen2_5_VLForConditionalGeneration(config), processor


def _idefics3(tokenizer: Any, s: dict[str, int]) -> tuple[Any, Any]:
    import transformers as tf

    side, patch, scale = s["image_size"], 4, 2
    vision = {"model_type": "idefics3_vision", "hidden_size": s["hidden"], "intermediate_size": 2 * s["hidden"],
              "num_hidden_layers": s["vision_layers"], "num_attention_heads": s["heads"], "image_size": side,
              "patch_size": patch}
    config = tf.Idefics3Config(vision_config=vision, text_config=_text_config("llama", tokenizer, s),
                               image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale)
    # images up to 2x2 tiles of `side` px plus the global view; each tile -> (side/patch)^2 / scale^2 tokens
    images = tf.Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * side},
                                       max_image_size={"longest_edge": side})
    processor = tf.Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                     image_seq_len=(side // patch) ** 2 // scale**2)
    return tf.Idefics3ForConditionalGeneration(config), processor


_CHATML = ("<|im_start|>", "<|im_end|>")
FAMILIES: dict[str, TinyFamily] = {
    "llava": TinyFamily(_CHATML + ("<image>",), "<image>", _llava),
    "llava_next": TinyFamily(_CHATML + ("<image>",), "<image>", _llava_next),
    "qwen2_5_vl": TinyFamily(_CHATML + ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
                             "<|vision_start|><|image_pad|><|vision_end|>", _qwen2_5_vl),
    "idefics3": TinyFamily(_CHATML + ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
                           + tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
                           "<image>", _idefics3, end_of_turn="<end_of_utterance>"),
}


def save_tiny_vlm(family: str, directory: str | Path, *, seed: int = 0, **overrides: int) -> Path:
    """Write a random tiny checkpoint of `family` (llava, llava_next, qwen2_5_vl, idefics3) with its processor.

    `overrides`: any of SIZES (hidden, layers, vision_layers, heads, image_size). Returns `directory`.
    """
    if family not in FAMILIES:
        raise ConfigError(f"save_tiny_vlm: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    unknown = sorted(set(overrides) - set(SIZES))
    if unknown:
        raise ConfigError(f"save_tiny_vlm: unknown size {unknown[0]!r}; valid: {', '.join(SIZES)}")
    spec, sizes = FAMILIES[family], {**SIZES, **overrides}
    tokenizer = bpe_tokenizer(["<|endoftext|>", *spec.special_tokens], eos=spec.end_of_turn)
    tokenizer.chat_template = template = chat_template(spec.image_markup, spec.end_of_turn)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the weights depend on `seed` only; the caller's RNG is left as it was
    try:
        model, processor = spec.build(tokenizer, sizes)
    finally:
        torch.random.set_rng_state(generator_state)
    processor.chat_template = template
    directory = Path(directory)
    model.save_pretrained(str(directory), safe_serialization=True)
    processor.save_pretrained(str(directory))
    return directory
