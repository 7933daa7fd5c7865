"""Generated visual QA: coloured shapes on a 2x2 grid; questions on colour, shape, position and count."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from mmadapt.quickstart.qa_files import COUNTS, write_qa_splits

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
SHAPES = ("circle", "square", "triangle")
CELLS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
QUESTIONS = {
    "colour": ["what colour is the shape?", "which colour does the shape have?"],
    "shape": ["what shape is it?", "which shape is in the image?"],
    "position": ["where is the shape?", "in which corner is the shape?"],
    "count": ["how many shapes are there?", "count the shapes."],
}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cell: tuple[int, int], colour: tuple[int, int, int],
               size: int, rng: random.Random) -> None:
    half = size // 2
    pad = max(1, half // 8)
    x0 = cell[0] * half + pad + rng.randint(0, 1)
    y0 = cell[1] * half + pad + rng.randint(0, 1)
    x1, y1 = x0 + half - 2 * pad - 1, y0 + half - 2 * pad - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif shape == "square":
        draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=colour)


def make_sample(rng: random.Random, size: int) -> tuple[Image.Image, str, str]:
    """One image and one (question, answer)."""
    image = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    kind = rng.choice(list(QUESTIONS))
    if kind == "count":
        n = rng.choice(list(COUNTS))
        for cell in rng.sample(list(CELLS.values()), n):
            draw_shape(draw, rng.choice(SHAPES), cell, COLOURS[rng.choice(list(COLOURS))], size, rng)
        answer = COUNTS[n]
    else:
        colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(CELLS))
        draw_shape(draw, shape, CELLS[position], COLOURS[colour], size, rng)
        answer = {"colour": colour, "shape": shape, "position": position}[kind]
    return image, rng.choice(QUESTIONS[kind]), answer


def generate(out_dir: str | Path, seed: int = 0, n_train: int = 3000, n_eval: int = 300, image_size: int = 32) -> None:
    """Write images/, train.jsonl, eval.jsonl (LLaVA format) and tokenizer/ (word-level) into `out_dir`."""
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    out = Path(out_dir)
    rng = random.Random(seed)
    texts: list[str] = []

    def make(_i: int, path: Path) -> tuple[str, str]:
        image, question, answer = make_sample(rng, image_size)
        image.save(path)
        texts.extend([question, answer])
        return question, answer

    write_qa_splits(out, "image", "images", "png", {"train": n_train, "eval": n_eval}, make)
    all_words = [" ".join(QUESTIONS[k]) for k in QUESTIONS] + list(COLOURS) + list(SHAPES) + list(CELLS) + list(COUNTS.values())
    train_word_tokenizer(texts + all_words, out / "tokenizer", extra_tokens=["<image>"])
