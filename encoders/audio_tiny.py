"""A tiny audio encoder for tiny default models: two strided convolutions over torchaudio log-mels + a transformer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmadapt.encoders.audio import AudioEncoder, AudioOptions
from mmadapt.encoders.positions import sinusoidal_embedding


@dataclass
class TinyAudioConfig(AudioOptions):
    sample_rate: int = 16000
    window_seconds: float = 1.0
    n_mels: int = 32
    n_fft: int = 400
    hop_length: int = 160
    width: int = 64
    depth: int = 2
    heads: int = 2
    conv_strides: list[int] = field(default_factory=lambda: [2, 2])  # time downsampling of the two convolutions

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        if len(self.conv_strides) != 2 or min(self.conv_strides) < 1:
            raise ValueError(f"conv_strides must be two positive integers, got {self.conv_strides}")
        if self.window_seconds * self.sample_rate < self.hop_length:
            raise ValueError("window_seconds is shorter than one hop")


class LogMel:
    """Log-mel front-end (torchaudio transforms), Whisper's scaling; a plain object, so it stays on the CPU
    and out of the state dict when the encoder moves to a device."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        import torchaudio.transforms as AT

        self.params = {"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels}
        self.mel = AT.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        mel = self.mel(windows)[..., :-1]  # [W, n_mels, S // hop + 1] -> [W, n_mels, S // hop] (centred STFT's extra frame)
        log = torch.log10(mel.clamp(min=1e-10))
        # Per window: clamp to 8 log-units below the peak, then scale to roughly [-1, 1] (as Whisper does).
        log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)
        return (log + 4.0) / 4.0


class TinyAudioEncoder(AudioEncoder):
    """Two strided 1-D convolutions over log-mels, sinusoidal positions, a small pre-norm transformer."""

    config_class = TinyAudioConfig

    def __init__(self, config: TinyAudioConfig) -> None:
        super().__init__(config)
        self.frontend = LogMel(config.sample_rate, config.n_fft, config.hop_length, config.n_mels)
        window = int(round(config.window_seconds * config.sample_rate))
        tokens = window // config.hop_length
        for stride in config.conv_strides:
            tokens = math.ceil(tokens / stride)  # kernel 3, padding 1
        s1, s2 = config.conv_strides
        self.conv1 = nn.Conv1d(config.n_mels, config.width, kernel_size=3, stride=s1, padding=1)
        self.conv2 = nn.Conv1d(config.width, config.width, kernel_size=3, stride=s2, padding=1)
        # Fixed sinusoidal positions (as Whisper): time stays visible in the features even when the encoder is frozen.
        self.register_buffer("positions", sinusoidal_embedding(tokens, config.width), persistent=False)
        layer = nn.TransformerEncoderLayer(config.width, config.heads, dim_feedforward=2 * config.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self._set_layout(config.sample_rate, window, tokens, config.width)

    def featurize(self, windows: torch.Tensor) -> torch.Tensor:
        return self.frontend(windows)  # [W, S] -> [W, n_mels, frames]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.conv1.weight.dtype)
        h = nn.functional.gelu(self.conv1(x))  # [n, n_mels, frames] -> [n, width, frames / s1]
        h = nn.functional.gelu(self.conv2(h)).transpose(1, 2)  # -> [n, tokens, width]
        return self.norm(self.transformer(h + self.positions))

    def preprocess_fingerprint(self) -> dict[str, Any]:
        return {**super().preprocess_fingerprint(), "log_mel": self.frontend.params}
