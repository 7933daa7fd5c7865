"""HF audio encoders: the encoder half of Whisper over log-mels, and wav2vec2-family models over raw waveforms."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmadapt.encoders.audio import AudioEncoder, AudioOptions
from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)

# wav2vec2-family model types: raw-waveform input (`input_values`), conv feature extractor + transformer.
WAV2VEC2_FAMILY = ("wav2vec2", "hubert", "wavlm", "wav2vec2-conformer", "data2vec-audio", "unispeech", "unispeech-sat")


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
        super().__init__(config)
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

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
        super().__init__(config)
        from transformers import Wav2Vec2FeatureExtractor

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
