"""Generated audio QA: synthesised tones, beeps and chords as audio files; questions on pitch, count, order and chords.

Clips are one second long, written at 16 or 22.05 kHz (the encoder resamples) as 16-bit wav,
with a random level, soft attacks and a little noise. Answers are one word, so exact match is
the metric.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from mmadapt.quickstart.qa_files import COUNTS, write_qa_splits

# Pitch bands two octaves apart, so one band is never confused with another by a coarse mel front-end.
BANDS = {"low": (180.0, 260.0), "middle": (700.0, 1000.0), "high": (2600.0, 3600.0)}
QUESTIONS = {
    "pitch": ["is the tone low, middle or high?", "how high is the tone?"],
    "count": ["how many beeps are there?", "count the beeps."],
    "order": ["does the melody go up or down?", "is the second note higher or lower? answer up or down."],
    "chord": ["is it a chord or a single note?", "chord or single note?"],
}


def tone(freqs: list[float], seconds: float, rate: int) -> np.ndarray:
    """A sum of sines with 10 ms raised-cosine attack and release (no clicks), peak-normalised to 1."""
    n = max(1, int(seconds * rate))
    t = np.arange(n) / rate
    wave = sum(np.sin(2 * math.pi * f * t) for f in freqs)
    ramp = min(n // 2, int(0.01 * rate))
    if ramp:
        envelope = np.ones(n)
        edge = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, ramp))
        envelope[:ramp], envelope[-ramp:] = edge, edge[::-1]
        wave = wave * envelope
    return wave / max(np.abs(wave).max(), 1e-9)


def place(clip: np.ndarray, sound: np.ndarray, start_s: float, rate: int) -> None:
    start = int(start_s * rate)
    end = min(len(clip), start + len(sound))
    clip[start:end] += sound[: end - start]


def make_clip(rng: random.Random, kind: str, rate: int, seconds: float = 1.0) -> tuple[np.ndarray, str]:
    """One clip for a question kind and its answer."""
    clip = np.zeros(int(seconds * rate))
    if kind == "pitch":
        band = rng.choice(list(BANDS))
        length = rng.uniform(0.4, 0.8)
        place(clip, tone([rng.uniform(*BANDS[band])], length, rate), rng.uniform(0.0, seconds - length), rate)
        answer = band
    elif kind == "count":
        n = rng.choice(list(COUNTS))
        freq = rng.uniform(*BANDS[rng.choice(list(BANDS))])
        slots = len(COUNTS)
        slot = seconds / slots  # at most one beep per slot, gaps of at least a third of a slot: beeps never merge
        length = rng.uniform(0.45, 0.5) * slot  # beeps of one length: the sound's duration grows with the count
        for k in sorted(rng.sample(range(slots), n)):
            place(clip, tone([freq], length, rate), (k + rng.uniform(0.05, 0.15)) * slot, rate)
        answer = COUNTS[n]
    elif kind == "order":
        low, high = rng.uniform(*BANDS["low"]), rng.uniform(*BANDS["high"])
        up = rng.random() < 0.5
        first, second = (low, high) if up else (high, low)
        length = rng.uniform(0.25, 0.4)
        place(clip, tone([first], length, rate), rng.uniform(0.0, 0.05), rate)
        place(clip, tone([second], length, rate), 0.5 + rng.uniform(0.0, 0.05), rate)
        answer = "up" if up else "down"
    elif kind == "chord":
        root = rng.uniform(*BANDS["middle"])
        chord = rng.random() < 0.5
        # An open major triad (root, fifth, the third an octave up): its notes fall in different mel bands.
        freqs = [root, root * 2 ** (7 / 12), root * 2 ** (16 / 12)] if chord else [root]
        length = rng.uniform(0.5, 0.8)
        place(clip, tone(freqs, length, rate), rng.uniform(0.0, seconds - length), rate)
        answer = "chord" if chord else "single"
    else:
        raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(QUESTIONS)}")
    level = rng.uniform(0.3, 0.8)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 0.01, clip.shape)
    return np.clip(clip * level + noise, -1.0, 1.0).astype(np.float32), answer


def generate(out_dir: str | Path, seed: int = 0, n_train: int = 2000, n_eval: int = 200,
             kinds: list[str] | None = None, sample_rates: list[int] | None = None, seconds: float = 1.0) -> None:
    """Write audio/, train.jsonl, eval.jsonl (LLaVA format with an `audio` field) and tokenizer/ into `out_dir`."""
    import soundfile as sf

    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    kinds = list(kinds or QUESTIONS)
    for kind in kinds:
        if kind not in QUESTIONS:
            raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(QUESTIONS)}")
    rates = list(sample_rates or [16000, 22050])
    out = Path(out_dir)
    rng = random.Random(seed)

    def make(i: int, path: Path) -> tuple[str, str]:
        kind = kinds[i % len(kinds)]  # balanced question kinds
        rate = rng.choice(rates)
        clip, answer = make_clip(rng, kind, rate, seconds)
        sf.write(path, clip, rate, subtype="PCM_16")
        return rng.choice(QUESTIONS[kind]), answer

    write_qa_splits(out, "audio", "audio", "wav", {"train": n_train, "eval": n_eval}, make)
    words = [q for qs in QUESTIONS.values() for q in qs] + list(BANDS) + list(COUNTS.values()) + ["up", "down", "chord", "single"]
    train_word_tokenizer(words, out / "tokenizer", extra_tokens=["<audio>"])
