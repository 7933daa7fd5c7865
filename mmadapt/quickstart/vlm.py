"""`mmadapt quickstart vlm`: a tiny vision-language model learns coloured-shape questions in two stages."""

from __future__ import annotations

from pathlib import Path

from mmadapt.quickstart.media_qa import run_packaged


def run(out: Path, connector: str | None = None) -> dict[str, float]:
    """Generate shapes, measure exact match, train (stage 1: connector; stage 2: all), measure again."""
    return run_packaged("vlm", "image", out, connector)
