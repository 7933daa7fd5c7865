"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on the import path)."""

from __future__ import annotations

import time
from typing import Callable


def best_of(fn: Callable[[], object], repeats: int = 2) -> float:
    """The fastest of `repeats` timed calls (seconds): the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
