"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on the import path)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# The sizes of the generated preference-pair benchmarks (dpo_vs_trl, reference_memory): parent and child share them.
PAIR_SIZES = ("hidden", "layers", "vocab", "pairs", "words", "steps", "batch")


def best_of(fn: Callable[[], object], repeats: int = 2) -> float:
    """The fastest of `repeats` timed calls (seconds): the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def pair_bench_parser(description: str, children: list[str], hidden: int, layers: int, vocab: int, pairs: int,
                      words: int, steps: int, batch: int) -> argparse.ArgumentParser:
    """The options of a preference-pair benchmark that runs each variant in a child process (`--child NAME`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--vocab", type=int, default=vocab, help="words in the generated vocabulary")
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--words", type=int, default=words, help="prompt length in words (completions: half)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=batch, help="pairs per step")
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    return parser


def run_child(script: str, name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run `script --child name` in a fresh process (its own peak memory and warm-up) with the same sizes; the
    JSON object its last output line prints."""
    cmd = [sys.executable, script, "--child", name, "--root", str(root)]
    for key in PAIR_SIZES:
        cmd += [f"--{key}", str(getattr(args, key))]
    output = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])
