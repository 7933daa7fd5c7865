"""Video encoder: decode with PyAV, sample frames, encode each with any registered vision encoder, aggregate over time.

Frames are sampled uniformly over the whole clip (`num_frames` evenly spaced, first and last
included) or at a fixed rate (`fps`: frames at 0, 1/fps, 2/fps, ... from the start). A clip with
fewer frames than that is an error naming the file, never silently padded. Aggregation over time:

- `concat`: every frame's tokens, frame after frame, plus a temporal embedding per frame
  (`num_features = num_frames * frame tokens`);
- `mean`: the frames' tokens averaged (`num_features = frame tokens`; motion direction is lost);
- a connector spec (`{name: qformer | resampler, ...}`): that connector, built through the registry
  with in_dim = out_dim = the frame encoder's width, over all frames' tokens (with temporal
  embeddings). Train it with `training.train_modules: [encoders.video.aggregator, ...]`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmadapt import registry
from mmadapt.encoders.base import BaseEncoder, load_image
from mmadapt.encoders.positions import sinusoidal_embedding
from mmadapt.errors import ConfigError, DataError


@dataclass
class VideoConfig:
    frame_encoder: dict[str, Any] = field(default_factory=dict)  # any image encoder spec, e.g. {name: timm, ...}
    num_frames: int = 8
    fps: float | None = None  # None: uniform over the clip; else frames at this rate from the start
    aggregate: str | dict[str, Any] = "concat"  # concat | mean | a connector spec {name: qformer | resampler, ...}
    temporal_embedding: Literal["sinusoidal", "learned", "none"] = "sinusoidal"

    def __post_init__(self) -> None:
        if not self.frame_encoder:
            raise ValueError("frame_encoder is required: an image encoder spec such as {name: timm, model_name: ...}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if isinstance(self.aggregate, str) and self.aggregate not in ("concat", "mean"):
            raise ValueError(f"aggregate {self.aggregate!r}: valid: concat, mean, or a connector spec {{name: qformer, ...}}")
        if isinstance(self.aggregate, dict) and "name" not in self.aggregate:
            raise ValueError("aggregate: a connector spec needs a 'name' (e.g. qformer, resampler)")


def frame_indices(total: int, native_fps: float, num_frames: int, fps: float | None) -> list[int]:
    """Which of `total` decoded frames to keep; raises ValueError when the clip is too short."""
    if fps is None:
        if total < num_frames:
            raise ValueError(f"has {total} frames, fewer than num_frames={num_frames}")
        if num_frames == 1:
            return [total // 2]
        return [round(i * (total - 1) / (num_frames - 1)) for i in range(num_frames)]
    step = native_fps / fps  # native frames per sampled frame
    indices = [int(math.floor(i * step + 1e-6)) for i in range(num_frames)]
    if indices[-1] >= total:
        needed = (num_frames - 1) / fps
        raise ValueError(f"is {total / native_fps:.2f} s ({total} frames at {native_fps:g} fps); {num_frames} frames "
                         f"at {fps:g} fps need more than {needed:.2f} s")
    return indices


def open_video(raw: Any):
    """An open PyAV container and its first video stream; errors (missing, corrupt, no decoder) name the file."""
    import av

    name = describe(raw)
    if isinstance(raw, (str, Path)) and not Path(raw).is_file():
        raise DataError(f"video file not found: {name}")
    try:
        container = av.open(io.BytesIO(raw) if isinstance(raw, (bytes, bytearray)) else str(raw))
    except av.error.FFmpegError as e:
        raise DataError(f"cannot open video {name}: corrupt or not a video file ({e})") from e
    if not container.streams.video:
        container.close()
        raise DataError(f"video {name} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise DataError(f"video {name}: unsupported codec (this FFmpeg build has no decoder for it); re-encode it, "
                        "e.g. to H.264 (mp4) or VP9 (webm)")
    return container, stream


def describe(raw: Any) -> str:
    return str(raw) if isinstance(raw, (str, Path)) else "<in-memory video bytes>"


def count_frames(container: Any, stream: Any) -> tuple[int, float]:
    """(frames, native fps): from the header when it says, else by demuxing (no decoding)."""
    native_fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    return int(total), native_fps


def sample_indices(raw: Any, total: int, native_fps: float, num_frames: int, fps: float | None) -> list[int]:
    try:
        return frame_indices(total, native_fps, num_frames, fps)
    except ValueError as e:
        raise DataError(f"video {describe(raw)} {e}") from None


def decode_frames(raw: Any, num_frames: int, fps: float | None) -> list[Any]:
    """The sampled frames of one video (path or bytes) as PIL images; errors name the file."""
    import av

    container, stream = open_video(raw)
    with container:
        total, native_fps = count_frames(container, stream)
        wanted = sample_indices(raw, total, native_fps, num_frames, fps)
        container.seek(0)
        keep, frames = set(wanted), {}
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index in keep:
                    frames[index] = frame.to_image()
                if index >= wanted[-1]:
                    break
        except av.error.FFmpegError as e:
            raise DataError(f"cannot decode video {describe(raw)}: corrupt data ({e})") from e
    if len(frames) < len(keep):
        raise DataError(f"video {describe(raw)} decoded to {len(frames)} of the {len(keep)} frames asked for "
                        f"(frame indices {wanted}); the file is truncated or corrupt")
    return [frames[i] for i in wanted]


class VideoEncoder(BaseEncoder):
    modality = "video"
    config_class = VideoConfig

    def __init__(self, config: VideoConfig) -> None:
        super().__init__(config)
        self.frame_encoder = registry.build("encoder", config.frame_encoder, where="frame_encoder")
        if getattr(self.frame_encoder, "modality", None) != "image":
            raise ConfigError(f"frame_encoder {config.frame_encoder.get('name')!r} is a "
                              f"{getattr(self.frame_encoder, 'modality', '?')} encoder; an image encoder is needed")
        width = self.frame_encoder.hidden_size
        self.hidden_size = width
        if config.temporal_embedding == "learned":
            self.temporal = nn.Parameter(torch.randn(config.num_frames, width) * 0.02)
        elif config.temporal_embedding == "sinusoidal":
            self.register_buffer("temporal", sinusoidal_embedding(config.num_frames, width), persistent=False)
        else:
            self.temporal = None
        self.aggregator = None
        if isinstance(config.aggregate, dict):
            self.aggregator = registry.build("connector", config.aggregate, where="aggregate", in_dim=width, out_dim=width)
        frame_tokens = self.frame_encoder.num_features
        if config.aggregate == "mean":
            self.num_features = frame_tokens
        elif config.aggregate == "concat":
            self.num_features = config.num_frames * frame_tokens
        else:
            self.num_features = self.aggregator.num_tokens(config.num_frames * frame_tokens)

    def preprocess(self, raw: Any) -> torch.Tensor:
        """A path, bytes, or a list of frames (PIL images / HxWx3 arrays / paths) -> `[T, C, H, W]`."""
        if isinstance(raw, (list, tuple)):
            if len(raw) < self.config.num_frames:
                raise DataError(f"video given as {len(raw)} frames, fewer than num_frames={self.config.num_frames}")
            wanted = frame_indices(len(raw), 1.0, self.config.num_frames, None)
            frames = [load_image(raw[i]) for i in wanted]
        else:
            frames = decode_frames(raw, self.config.num_frames, self.config.fps)
        return torch.stack([self.frame_encoder.preprocess(frame) for frame in frames])  # T x [C, H, W] -> [T, C, H, W]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        b, t = batch.shape[:2]
        tokens = self.frame_encoder(batch.flatten(0, 1))  # [B, T, C, H, W] -> [B*T, C, H, W] -> [B*T, N, D]
        tokens = tokens.view(b, t, tokens.shape[1], tokens.shape[2])  # [B, T, N, D]
        if self.config.aggregate == "mean":
            return tokens.mean(dim=1)  # [B, N, D]
        if self.temporal is not None:
            tokens = tokens + self.temporal.to(tokens.dtype)[None, :, None, :]  # one embedding per frame, all its tokens
        tokens = tokens.flatten(1, 2)  # [B, T*N, D]
        return tokens if self.aggregator is None else self.aggregator(tokens)  # [B, M, D]

    def check(self, path: Path) -> None:
        """Before training, without decoding: the file opens, has a decodable video stream and enough frames."""
        container, stream = open_video(path)
        with container:
            total, native_fps = count_frames(container, stream)
        sample_indices(path, total, native_fps, self.config.num_frames, self.config.fps)

    def reload_spec(self, spec: dict[str, Any], checkpoint_dir: Path, modality: str) -> dict[str, Any]:
        """The frame encoder's own reload spec (its weights are in this encoder's state dict)."""
        inner = getattr(self.frame_encoder, "reload_spec", None)
        if inner is not None:
            spec = {**spec, "frame_encoder": inner(dict(spec["frame_encoder"]), checkpoint_dir, f"{modality}_frames")}
        return spec

    def preprocess_fingerprint(self) -> dict[str, Any]:
        """What decides `preprocess`'s output besides this config (for the feature cache): the frame encoder's."""
        inner = getattr(self.frame_encoder, "preprocess_fingerprint", None)
        transform = getattr(self.frame_encoder, "transform", None)
        return {"frame_encoder": inner() if inner else repr(transform)}
