"""Tiny models and generated preference data shared by the preference-optimisation and peft tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.tiny import build_model, model_spec, word_tokenizer  # noqa: F401  (build_model: re-exported for the tests)

OBJECTS = ("apple", "banana", "cherry", "grape", "lemon", "lime", "plum", "kiwi")
COLOURS = ("red", "yellow", "green", "purple", "orange", "blue", "black", "white")


def colour_pairs(seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (object, wrong colour) pair as {prompt, chosen, rejected}, split in half: (train, eval)."""
    pairs = []
    for obj, colour in zip(OBJECTS, COLOURS):
        for wrong in COLOURS:
            if wrong != colour:
                pairs.append({"prompt": f"what colour is the {obj} ?", "chosen": f"the {obj} is {colour} .",
                              "rejected": f"the {obj} is {wrong} ."})
    random.Random(seed).shuffle(pairs)
    return pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]


def kto_samples(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unpaired KTO samples from pairs: the chosen completion desirable, the rejected one undesirable."""
    out = []
    for pair in pairs:
        out.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        out.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer over the colour task's words (and <image>), saved to `directory`."""
    return word_tokenizer(directory, [" ".join(OBJECTS + COLOURS) + " what colour is the ? . describe shape"])


def text_model_spec(tokenizer_dir: Path, hidden: int = 32) -> dict[str, Any]:
    """A ModelConfig mapping for a tiny text-only llama built from its config."""
    return model_spec(tokenizer_dir, hidden=hidden, layers=2, max_positions=128)


def vision_model_spec(tokenizer_dir: Path, hidden: int = 32) -> dict[str, Any]:
    """A tiny timm ViT (32x32 images, 16 patches) + linear connector + tiny llama."""
    return model_spec(tokenizer_dir, image=True, hidden=hidden, layers=2, max_positions=128)


def write_images(directory: Path, n: int, seed: int = 0) -> list[str]:
    """`n` random 32x32 PNGs; returns their file names (relative to `directory`)."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(directory / name)
        names.append(name)
    return names
