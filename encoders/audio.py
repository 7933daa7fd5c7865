"""What every audio encoder shares: reading, resampling and windowing, and the `AudioEncoder` base class.

The backends live one per file: audio_hf.py (HF Whisper, wav2vec2 / HuBERT), audio_tiny.py (a tiny conv +
transformer over torchaudio log-mels). Reading: wav / flac / ogg (anything libsndfile reads) via soundfile, downmixed to mono and resampled
with torchaudio to the encoder's rate. Windowing: every item becomes exactly `num_windows` windows of
the encoder's window length (Whisper: its fixed input length; others: `window_seconds`). Shorter
audio is padded with silence; longer audio is truncated after the last window (a warning is logged
once per encoder) or refused with `overflow: error`. So items stack into one batch and every item
gives the same `num_features = num_windows * tokens_per_window`; window w's tokens come before
window w+1's.
"""

from __future__ import annotations

import abc
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmadapt.encoders.base import BaseEncoder
from mmadapt.errors import DataError

logger = logging.getLogger(__name__)

def describe_raw(raw: Any) -> str:
    """How an item is named in error messages: its path, or its kind when it is in memory."""
    if isinstance(raw, (str, Path)):
        return str(raw)
    return f"<in-memory {type(raw).__name__}>"


def wav_truncation(raw: str | Path | bytes | bytearray) -> str | None:
    """Why a RIFF/WAVE file is truncated (its `data` chunk declares more bytes than the file holds), or None.

    libsndfile reads such a file without error, returning only the samples present, so a cut download would
    train silently on part of the clip. Streamed WAVs (data size 0 or 0xFFFFFFFF) and other formats pass."""
    if isinstance(raw, (bytes, bytearray)):
        head, total = bytes(raw[:65536]), len(raw)
    else:
        with open(raw, "rb") as f:
            head = f.read(65536)
            total = os.fstat(f.fileno()).st_size
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"data":
            available = total - (pos + 8)
            if size not in (0, 0xFFFFFFFF) and size > available:
                return f"its header declares {size} bytes of samples but the file holds {available}"
            return None
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def load_audio(raw: Any, sample_rate: int, resamplers: dict[int, Any] | None = None) -> torch.Tensor:
    """One item as a mono float32 waveform `[T]` at `sample_rate`.

    `raw`: a file path, the file's bytes, `(array, rate)`, `{"array", "sampling_rate"}` (HF datasets),
    or a 1-D array / tensor already at `sample_rate`. Errors (missing, corrupt, zero-length or
    non-finite audio) are DataErrors naming the file. `resamplers` (source rate -> torchaudio
    Resample) keeps each rate pair's sinc kernel, which costs ten times the resampling itself.
    """
    import soundfile as sf

    name = describe_raw(raw)
    if isinstance(raw, dict) and "array" in raw:
        raw = (raw["array"], raw.get("sampling_rate", sample_rate))
    if isinstance(raw, tuple):
        if len(raw) != 2:
            raise DataError(f"{name}: an in-memory audio item is (array, sample_rate)")
        data, rate = np.asarray(raw[0], dtype=np.float32), int(raw[1])
        data = data.T if data.ndim == 2 and data.shape[0] < data.shape[1] else data  # [C, T] -> [T, C]
    elif isinstance(raw, (np.ndarray, torch.Tensor)):
        data, rate = np.asarray(raw, dtype=np.float32), sample_rate
        if data.ndim != 1:
            raise DataError(f"{name}: a bare audio array must be 1-D (mono) at {sample_rate} Hz; pass (array, rate) otherwise")
    elif isinstance(raw, (str, Path, bytes, bytearray)):
        if isinstance(raw, (str, Path)) and not Path(raw).is_file():
            raise DataError(f"audio file not found: {name}")
        source = io.BytesIO(raw) if isinstance(raw, (bytes, bytearray)) else str(raw)
        truncated = wav_truncation(raw)
        if truncated:
            raise DataError(f"audio {name} is truncated: {truncated}; re-create or re-download it")
        try:
            data, rate = sf.read(source, dtype="float32", always_2d=True)  # [T, C]
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise DataError(f"cannot decode audio {name}: {e} (readable formats: wav, flac, ogg, and others libsndfile reads)") from e
    else:
        raise DataError(f"{name}: unsupported audio item; give a path, bytes, (array, rate) or a 1-D array")
    wave = torch.from_numpy(np.ascontiguousarray(data))
    if wave.ndim == 2:
        wave = wave.mean(dim=1)  # [T, C] -> [T]: downmix to mono
    if wave.numel() == 0:
        raise DataError(f"audio {name} has no samples (zero length)")
    if not torch.isfinite(wave).all():
        raise DataError(f"audio {name} holds NaN or infinite samples")
    if rate <= 0:
        raise DataError(f"audio {name}: invalid sample rate {rate}")
    if rate != sample_rate:
        import torchaudio.transforms as AT

        resamplers = {} if resamplers is None else resamplers
        if rate not in resamplers:
            resamplers[rate] = AT.Resample(rate, sample_rate)
        wave = resamplers[rate](wave)
    return wave


def split_windows(wave: torch.Tensor, window: int, num_windows: int) -> tuple[torch.Tensor, bool]:
    """`[T]` -> `[num_windows, window]`, zero-padded at the end; also whether samples were cut off."""
    total = window * num_windows
    truncated = wave.numel() > total
    wave = wave[:total]
    padded = torch.nn.functional.pad(wave, (0, total - wave.numel()))
    return padded.view(num_windows, window), truncated  # [W * S] -> [W, S]


@dataclass
class AudioOptions:
    """Options every audio backend shares: how many windows an item becomes, and what to do with longer audio."""

    num_windows: int = 1
    overflow: Literal["truncate", "error"] = "truncate"

    def __post_init__(self) -> None:
        if self.num_windows < 1:
            raise ValueError(f"num_windows must be >= 1, got {self.num_windows}")


class AudioEncoder(BaseEncoder):
    """Shared reading/windowing; a backend sets `sample_rate`, `window_samples`, `tokens_per_window`,
    `hidden_size` and implements `featurize(windows[W, S]) -> [W, ...]` and `encode(x[n, ...]) -> [n, tokens, D]`.
    """

    modality = "audio"
    config_class: type = AudioOptions
    sample_rate: int
    window_samples: int
    tokens_per_window: int

    def _set_layout(self, sample_rate: int, window_samples: int, tokens_per_window: int, hidden_size: int) -> None:
        self.sample_rate = int(sample_rate)
        self.window_samples = int(window_samples)
        self.tokens_per_window = int(tokens_per_window)
        self.hidden_size = int(hidden_size)
        self.num_features = self.config.num_windows * self.tokens_per_window
        self._warned_truncation = False
        self._resamplers: dict[int, Any] = {}  # source rate -> Resample (plain dict: not submodules, stays on the CPU)

    def preprocess(self, raw: Any) -> torch.Tensor:
        wave = load_audio(raw, self.sample_rate, self._resamplers)
        windows, truncated = split_windows(wave, self.window_samples, self.config.num_windows)
        if truncated:
            budget = self.window_samples * self.config.num_windows / self.sample_rate
            message = (f"audio {describe_raw(raw)} is {wave.numel() / self.sample_rate:.2f} s, longer than "
                       f"num_windows x window = {budget:.2f} s")
            if self.config.overflow == "error":
                raise DataError(f"{message}; raise the encoder's num_windows or set overflow: truncate")
            if not self._warned_truncation:
                logger.warning("%s; keeping the first %.2f s (further truncations are not reported)", message, budget)
                self._warned_truncation = True
        return self.featurize(windows)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        b, w = batch.shape[:2]
        features = self.encode(batch.flatten(0, 1))  # [B, W, ...] -> [B*W, ...] -> [B*W, n, D]
        return features.reshape(b, w * features.shape[1], features.shape[2])  # [B, W*n, D]

    def check(self, path: Path) -> None:
        """Header-only check before training: readable by libsndfile and not empty."""
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DataError(f"cannot decode audio {path}: {e} (readable formats: wav, flac, ogg, and others libsndfile reads)") from e
        if info.frames == 0:
            raise DataError(f"audio {path} has no samples (zero length)")
        truncated = wav_truncation(path)
        if truncated:
            raise DataError(f"audio {path} is truncated: {truncated}; re-create or re-download it")

    @abc.abstractmethod
    def featurize(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, samples] waveform windows -> the backbone's input features."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Featurized windows -> [B, n, hidden_size] tokens."""

    def preprocess_fingerprint(self) -> dict[str, Any]:
        """Everything besides config and weights that decides `preprocess`'s output (for the feature cache)."""
        return {"sample_rate": self.sample_rate, "window_samples": self.window_samples}
