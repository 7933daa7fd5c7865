"""Audio encoders: HF Whisper, HF wav2vec2 / HuBERT, and a tiny conv + transformer over log-mels.

Reading: wav / flac / ogg (anything libsndfile reads) via soundfile, downmixed to mono and resampled
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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mmadapt.encoders.base import BaseEncoder
from mmadapt.encoders.positions import sinusoidal_embedding
from mmadapt.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# wav2vec2-family model types: raw-waveform input (`input_values`), conv feature extractor + transformer.
WAV2VEC2_FAMILY = ("wav2vec2", "hubert", "wavlm", "wav2vec2-conformer", "data2vec-audio", "unispeech", "unispeech-sat")


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


# ------------------------------------------------------------------------------------------------
# HF backends
# ------------------------------------------------------------------------------------------------


@dataclass
class HFAudioConfig(AudioOptions):
    name_or_path: str | None = None  # hub id or local directory
    config: dict[str, Any] | None = None  # or an AutoConfig spec {model_type, ...} built with random weights
    pretrained: bool = True  # False: only the config is read from name_or_path; weights start random
    layer: int = -1  # hidden layer whose states are taken (-1: the last, after the final norm)
    feature_extractor: dict[str, Any] = field(default_factory=dict)  # overrides for the feature extractor
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("set exactly one of name_or_path (hub id or directory) and config (build from config)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a model_type")


def load_hf_model(config: HFAudioConfig, valid_types: tuple[str, ...], backend: str, encoder_cls: type | None = None) -> nn.Module:
    """`AutoModel` from a hub id / directory or from a config spec; the model_type must be one `valid_types` names.

    `encoder_cls` (encoder-decoder models such as Whisper): return the loaded model's `get_encoder()`;
    built from a config, only `encoder_cls(config)` is constructed.
    """
    from transformers import AutoConfig, AutoModel

    where = config.name_or_path or "config"
    try:
        if config.name_or_path is not None:
            hf_config = AutoConfig.from_pretrained(config.name_or_path, trust_remote_code=config.trust_remote_code)
        else:
            spec = dict(config.config)
            hf_config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{backend} encoder {where}: cannot load its config: {e}") from e
    if hf_config.model_type not in valid_types:
        raise ConfigError(f"{backend} encoder {where}: model_type {hf_config.model_type!r} is not one of {', '.join(valid_types)}")
    if config.name_or_path is None or not config.pretrained:
        return encoder_cls(hf_config) if encoder_cls is not None else AutoModel.from_config(hf_config)
    try:
        model = AutoModel.from_pretrained(config.name_or_path, trust_remote_code=config.trust_remote_code)
    except OSError as e:
        raise ConfigError(f"{backend} encoder {where}: cannot load weights: {e}") from e
    return model.get_encoder() if encoder_cls is not None else model  # the decoder is dropped


def load_feature_extractor(config: HFAudioConfig, default_cls: type, defaults: dict[str, Any]):
    """The checkpoint's feature extractor (with overrides); a default one for config-built or extractor-less models."""
    from transformers import AutoFeatureExtractor

    if config.name_or_path is not None:
        try:
            return AutoFeatureExtractor.from_pretrained(config.name_or_path, **config.feature_extractor)
        except OSError:
            logger.warning("%s has no feature extractor config; using %s defaults", config.name_or_path, default_cls.__name__)
    return default_cls(**{**defaults, **config.feature_extractor})


class HFAudioEncoder(AudioEncoder):
    """Shared by the HF backends: `model` (a transformers model) and `feature_extractor`."""

    config_class = HFAudioConfig

    def reload_spec(self, spec: dict[str, Any], checkpoint_dir: Path, modality: str) -> dict[str, Any]:
        """Save the HF config and feature extractor into the checkpoint; the weights live in multimodal.safetensors."""
        from mmadapt.model import CHECKPOINT_REF

        relative = Path("encoders") / modality
        self.model.config.save_pretrained(str(Path(checkpoint_dir) / relative))
        self.feature_extractor.save_pretrained(str(Path(checkpoint_dir) / relative))
        return {**spec, "name_or_path": CHECKPOINT_REF + relative.as_posix(), "config": None, "pretrained": False,
                "feature_extractor": {}}

    def preprocess_fingerprint(self) -> dict[str, Any]:
        return {**super().preprocess_fingerprint(), "feature_extractor": self.feature_extractor.to_dict()}


def select_hidden(output: Any, layer: int) -> torch.Tensor:
    return output.last_hidden_state if layer == -1 else output.hidden_states[layer]


class WhisperEncoder(HFAudioEncoder):
    """The encoder half of an HF Whisper model over its log-mel features; one window is the model's fixed input length."""

    config_class = HFAudioConfig

    def __init__(self, config: HFAudioConfig) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

        self.config = config
        self.model = load_hf_model(config, ("whisper",), "whisper", encoder_cls=HFWhisperEncoder)
        hf = self.model.config
        self.feature_extractor = load_feature_extractor(config, WhisperFeatureExtractor, {"feature_size": hf.num_mel_bins})
        if self.feature_extractor.feature_size != hf.num_mel_bins:
            raise ConfigError(f"whisper encoder: feature extractor gives {self.feature_extractor.feature_size} mel bins, "
                              f"the model expects num_mel_bins={hf.num_mel_bins}")
        # Whisper accepts exactly max_source_positions * conv strides mel frames (30 s for released checkpoints).
        frames = hf.max_source_positions * self.model.conv1.stride[0] * self.model.conv2.stride[0]
        self._set_layout(self.feature_extractor.sampling_rate, frames * self.feature_extractor.hop_length,
                         hf.max_source_positions, hf.d_model)

    def featurize(self, windows: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(list(windows.numpy()), sampling_rate=self.sample_rate, max_length=self.window_samples,
                                     padding="max_length", truncation=True, return_tensors="pt")
        return out.input_features  # [W, n_mels, frames]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.model.conv1.weight.dtype)
        output = self.model(input_features=x, output_hidden_states=self.config.layer != -1)
        return select_hidden(output, self.config.layer)  # [n, max_source_positions, d_model]


@dataclass
class Wav2Vec2Config(HFAudioConfig):
    window_seconds: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")


class Wav2Vec2Encoder(HFAudioEncoder):
    """An HF wav2vec2-family model (wav2vec2, HuBERT, WavLM, ...) over raw waveforms, in windows of `window_seconds`."""

    config_class = Wav2Vec2Config

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        from transformers import Wav2Vec2FeatureExtractor

        self.config = config
        self.model = load_hf_model(config, WAV2VEC2_FAMILY, "wav2vec2")
        # HF's conv feature encoder sets requires_grad on its input in training mode, which fails when the waveform
        # is not a leaf (e.g. it carries gradients); its own parameters train either way.
        if hasattr(self.model, "feature_extractor"):
            self.model.feature_extractor._requires_grad = False
        self.feature_extractor = load_feature_extractor(
            config, Wav2Vec2FeatureExtractor, {"sampling_rate": 16000, "do_normalize": True, "return_attention_mask": False}
        )
        rate = self.feature_extractor.sampling_rate
        window = int(round(config.window_seconds * rate))
        tokens = int(self.model._get_feat_extract_output_lengths(torch.tensor(window)))
        if tokens < 1:
            raise ConfigError(f"wav2vec2 encoder: window_seconds={config.window_seconds} is shorter than the model's receptive field")
        self._set_layout(rate, window, tokens, self.model.config.hidden_size)

    def featurize(self, windows: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(list(windows.numpy()), sampling_rate=self.sample_rate, return_tensors="pt")
        return out.input_values  # [W, S]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=next(self.model.parameters()).dtype)
        output = self.model(input_values=x, output_hidden_states=self.config.layer != -1)
        return select_hidden(output, self.config.layer)  # [n, frames, hidden]


# ------------------------------------------------------------------------------------------------
# Tiny encoder for tiny default models
# ------------------------------------------------------------------------------------------------


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
        super().__init__()
        self.config = config
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
