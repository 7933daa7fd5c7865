"""Generated video QA: a coloured square moving across a dark frame, in real encoded mp4 files (PyAV).

The square changes colour once, mid-clip. Questions: which way it moves (left / right / up / down),
its colour before the change and the colour it turns into. One-word answers, so exact match is the
metric. (A yes/no "does it change colour?" variant was tried: the tiny model stayed near chance on it
within the quickstart's time budget, so every clip changes and the questions ask for the colours.)
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from mmadapt.quickstart.qa_files import write_qa_splits

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
QUESTIONS = {
    "direction": ["which way does the square move?", "in which direction does the square go?"],
    "start": ["what colour is the square at the start?", "which colour does the square have first?"],
    "final": ["what colour does the square turn into?", "what colour is the square at the end?"],
}
CODECS = ("libx264", "h264", "mpeg4")  # first one this FFmpeg build can encode


def pick_codec() -> str:
    import av

    for codec in CODECS:
        if codec in av.codecs_available:
            try:
                av.codec.Codec(codec, "w")
                return codec
            except (av.error.FFmpegError, ValueError):
                continue
    raise RuntimeError(f"this PyAV build can encode none of {', '.join(CODECS)}")


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 8, codec: str | None = None,
                pix_fmt: str = "yuv420p") -> None:
    """Encode `frames` (H x W x 3 uint8, even H and W for yuv420p) into a video file with PyAV."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or pick_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


def make_clip(rng: random.Random, kind: str, size: int = 32, num_frames: int = 8, square: int = 8,
              step: int = 3) -> tuple[list[np.ndarray], str]:
    """The frames of one clip and the answer to a question of `kind`."""
    direction = rng.choice(list(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    travel = step * (num_frames - 1)
    # Start where the whole path stays inside the frame; the cross-axis position is random.
    lo, hi = 0, size - square
    x0 = rng.randint(lo + travel, hi) if dx < 0 else rng.randint(lo, hi - travel) if dx > 0 else rng.randint(lo, hi)
    y0 = rng.randint(lo + travel, hi) if dy < 0 else rng.randint(lo, hi - travel) if dy > 0 else rng.randint(lo, hi)
    start_colour = rng.choice(list(COLOURS))
    end_colour = rng.choice([c for c in COLOURS if c != start_colour])
    switch = rng.randint(2, num_frames - 2)  # first frame with the new colour: never the first or last
    background = np.array([rng.randint(0, 30)] * 3, dtype=np.uint8)
    frames = []
    for i in range(num_frames):
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = background
        x, y = x0 + dx * step * i, y0 + dy * step * i
        frame[y:y + square, x:x + square] = COLOURS[end_colour if i >= switch else start_colour]
        frames.append(frame)
    answer = {"direction": direction, "start": start_colour, "final": end_colour}[kind]
    return frames, answer


def generate(out_dir: str | Path, seed: int = 0, n_train: int = 1500, n_eval: int = 150, size: int = 32,
             num_frames: int = 8, fps: int = 8, square: int = 8, step: int = 3, kinds: list[str] | None = None) -> None:
    """Write videos/ (mp4), train.jsonl, eval.jsonl (LLaVA format with a `video` field) and tokenizer/ into `out_dir`."""
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    kinds = list(kinds or QUESTIONS)
    for kind in kinds:
        if kind not in QUESTIONS:
            raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(QUESTIONS)}")
    if size % 2 or size < 16:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")
    if square + step * (num_frames - 1) > size:
        raise ValueError(f"a {square}-pixel square moving {step} pixels a frame for {num_frames} frames leaves a {size}-pixel frame")
    out = Path(out_dir)
    rng = random.Random(seed)
    codec = pick_codec()

    def make(i: int, path: Path) -> tuple[str, str]:
        kind = kinds[i % len(kinds)]
        frames, answer = make_clip(rng, kind, size=size, num_frames=num_frames, square=square, step=step)
        write_video(path, frames, fps=fps, codec=codec)
        return rng.choice(QUESTIONS[kind]), answer

    write_qa_splits(out, "video", "videos", "mp4", {"train": n_train, "eval": n_eval}, make)
    words = [q for qs in QUESTIONS.values() for q in qs] + list(COLOURS) + list(DIRECTIONS)
    train_word_tokenizer(words, out / "tokenizer", extra_tokens=["<video>"])
