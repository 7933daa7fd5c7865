"""`mmadapt quickstart audio`: a tiny audio-language model learns questions about generated tones in two stages."""

from __future__ import annotations

from pathlib import Path

from mmadapt.quickstart.media_qa import run_packaged


def run(out: Path, connector: str | None = None) -> dict[str, float]:
    """Generate tones, measure exact match, train (stage 1: connector; stage 2: all), measure again."""
    return run_packaged("audio", "audio", out, connector)
