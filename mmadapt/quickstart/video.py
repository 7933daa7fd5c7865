"""`mmadapt quickstart video`: a tiny video-language model learns motion and colour questions on generated mp4 clips."""

from __future__ import annotations

from pathlib import Path

from mmadapt.quickstart.media_qa import run_packaged


def run(out: Path, connector: str | None = None) -> dict[str, float]:
    """Generate clips, measure exact match, train (stage 1: connector; stage 2: all), measure again."""
    return run_packaged("video", "video", out, connector)
