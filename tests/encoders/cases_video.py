"""Encoder contract case for the video encoder: a real mp4 written with PyAV, frames through a tiny ViT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoder_cases import EncoderCase
from mmadapt.quickstart.tiny import tiny_vit_encoder


def mp4_file(folder: Path, frames: int = 10, size: int = 32) -> Path:
    from mmadapt.quickstart.motion import write_video

    rng = np.random.default_rng(0)
    path = Path(folder) / "clip.mp4"
    write_video(path, [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)])
    return path


CASES = [
    EncoderCase("video_concat", "video",
                lambda d: {"name": "video", "frame_encoder": tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1),
                           "num_frames": 4}, mp4_file, modality="video"),
]
