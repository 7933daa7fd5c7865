"""Encoder contract cases for the audio backends: tiny models built from configs, wav files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoder_cases import EncoderCase


def wav_file(folder: Path, seconds: float = 0.7, rate: int = 22050, seed: int = 0) -> Path:
    """A chord with noise at a rate the encoders must resample from."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 660 * t)
    wave += 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    path = Path(folder) / f"sound_{seed}.wav"
    sf.write(path, wave.astype(np.float32), rate)
    return path


WHISPER = {"model_type": "whisper", "d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "decoder_layers": 1,
           "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 80,
           "max_source_positions": 50, "vocab_size": 64}
WAV2VEC2 = {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2],
            "conv_bias": True, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "vocab_size": 32}

CASES = [
    EncoderCase("tiny_audio", "tiny_audio", lambda d: {"name": "tiny_audio", "width": 32, "depth": 1, "heads": 2,
                                                       "n_mels": 16, "window_seconds": 0.5, "num_windows": 2},
                wav_file, modality="audio"),
    EncoderCase("whisper", "whisper", lambda d: {"name": "whisper", "config": WHISPER}, wav_file, modality="audio"),
    EncoderCase("wav2vec2", "wav2vec2", lambda d: {"name": "wav2vec2", "config": WAV2VEC2, "window_seconds": 0.5},
                wav_file, modality="audio"),
]
