"""Helpers for the data-format tests: a byte-level BPE tokenizer (decoding gives back the exact text), a tiny
multimodal model on it, small PNGs, and the supervised spans of built examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tiny import build_model, model_spec

IGNORE = -100
CORPUS = ["what colour is the sky? The sky is blue.", "and the grass? The grass is green.", "Describe the image.",
          "You are a radiologist.", "No acute findings. Clear lungs.", "weather in Paris", "sunny, 21 degrees"]


def make_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<audio>", "<video>"]
    core.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(directory)
    return directory


def make_model(tokenizer_dir: Path, image: bool = True):
    return build_model(model_spec(tokenizer_dir, image=image))


def png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def supervised_texts(tok, example) -> list[str]:
    """The decoded runs of supervised tokens of a built conversation example."""
    runs, current = [], []
    for token, label in zip(example.input_ids + [0], example.labels + [IGNORE]):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs
