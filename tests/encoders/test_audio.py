"""Audio encoders: reading and resampling real files, windowing, bad input, and the HF backends loaded by path."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
import encoder_cases  # noqa: F401  (imports cases_audio through its extension point; importing that first is circular)
from cases_audio import WAV2VEC2, WHISPER

from mmadapt import registry
from mmadapt.encoders.audio import load_audio, split_windows
from mmadapt.errors import ConfigError, DataError

TINY = {"name": "tiny_audio", "width": 32, "depth": 1, "heads": 2, "n_mels": 16, "window_seconds": 0.5}


def sine(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * rate / wave.numel()


@pytest.mark.parametrize("fmt, subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_files_are_read_downmixed_and_resampled(tmp_path, fmt, subtype):
    path = tmp_path / f"tone.{fmt}"
    sf.write(path, sine(440.0, 1.0, 22050, channels=2), 22050, subtype=subtype)
    wave = load_audio(path, 16000)
    assert wave.ndim == 1 and wave.dtype == torch.float32
    assert abs(wave.numel() - 16000) <= 1  # one second at the target rate
    assert abs(peak_hz(wave, 16000) - 440.0) <= 2.0  # resampling keeps the pitch


def test_in_memory_items_are_accepted(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(300.0, 0.5, 8000), 8000)
    from_file = load_audio(path, 16000)
    torch.testing.assert_close(load_audio(path.read_bytes(), 16000), from_file)
    torch.testing.assert_close(load_audio((sine(300.0, 0.5, 8000), 8000), 16000), from_file, atol=1e-4, rtol=0)
    same = load_audio({"array": sine(300.0, 0.5, 16000), "sampling_rate": 16000}, 16000)
    torch.testing.assert_close(same, torch.from_numpy(sine(300.0, 0.5, 16000)), atol=1e-4, rtol=0)  # no resampling
    with pytest.raises(DataError, match="must be 1-D"):
        load_audio(np.zeros((2, 100), dtype=np.float32), 16000)


def test_bad_files_raise_data_errors_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + b"\x00garbage" * 50)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    truncated = tmp_path / "truncated.flac"
    sf.write(truncated, sine(440.0, 1.0, 16000), 16000)
    truncated.write_bytes(truncated.read_bytes()[:40])
    encoder = registry.build("encoder", TINY)
    with pytest.raises(DataError, match=r"cannot decode audio .*corrupt\.wav"):
        encoder.preprocess(str(corrupt))
    with pytest.raises(DataError, match=r"empty\.wav has no samples \(zero length\)"):
        encoder.preprocess(str(empty))
    with pytest.raises(DataError, match=r"truncated\.flac"):
        encoder.preprocess(str(truncated))
    with pytest.raises(DataError, match=r"audio file not found: .*missing\.wav"):
        encoder.preprocess(str(tmp_path / "missing.wav"))
    # The cheap pre-training check (header only) catches the same files.
    with pytest.raises(DataError, match=r"corrupt\.wav"):
        encoder.check(corrupt)
    with pytest.raises(DataError, match=r"empty\.wav has no samples"):
        encoder.check(empty)


def test_windows_pad_short_audio_and_truncate_or_refuse_long_audio(tmp_path, caplog):
    windows, cut = split_windows(torch.arange(5.0), window=2, num_windows=3)
    assert windows.tolist() == [[0, 1], [2, 3], [4, 0]] and not cut
    windows, cut = split_windows(torch.arange(9.0), window=2, num_windows=3)
    assert windows.tolist() == [[0, 1], [2, 3], [4, 5]] and cut

    long = tmp_path / "long.wav"
    sf.write(long, sine(440.0, 1.6, 16000), 16000)
    encoder = registry.build("encoder", {**TINY, "num_windows": 2})
    with caplog.at_level(logging.WARNING, logger="mmadapt.encoders.audio"):
        item = encoder.preprocess(str(long))
        encoder.preprocess(str(long))
    assert item.shape == (2, 16, 50)  # [windows, mels, frames of 0.5 s at hop 160]
    assert sum("long.wav is 1.60 s, longer than" in r.message for r in caplog.records) == 1  # reported once
    strict = registry.build("encoder", {**TINY, "num_windows": 2, "overflow": "error"})
    with pytest.raises(DataError, match=r"long\.wav is 1\.60 s.*raise the encoder's num_windows"):
        strict.preprocess(str(long))


def test_tiny_encoder_tokens_follow_window_order(tmp_path):
    """Window w's tokens come before window w+1's: a tone in the second half moves the change to the second half."""
    encoder = registry.build("encoder", {**TINY, "num_windows": 2}).eval()
    silent, late = np.zeros(16000, dtype=np.float32), np.zeros(16000, dtype=np.float32)
    late[8000:] = sine(1000.0, 0.5, 16000)
    with torch.no_grad():
        a = encoder(encoder.preprocess((silent, 16000))[None])
        b = encoder(encoder.preprocess((late, 16000))[None])
    per_window = encoder.tokens_per_window
    assert a.shape == (1, 2 * per_window, 32) == (1, encoder.num_features, encoder.hidden_size)
    torch.testing.assert_close(a[:, :per_window], b[:, :per_window])  # windows are encoded independently
    assert not torch.allclose(a[:, per_window:], b[:, per_window:])


def save_whisper(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}  # inside the tiny vocab
    model = WhisperModel(WhisperConfig(**{k: v for k, v in WHISPER.items() if k != "model_type"}, **ids)).eval()
    model.save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=WHISPER["num_mel_bins"], chunk_length=1).save_pretrained(tmp_path / "whisper")
    return model, tmp_path / "whisper"


def test_whisper_loaded_by_path_equals_the_hf_encoder(tmp_path):
    from transformers import WhisperFeatureExtractor

    model, path = save_whisper(tmp_path)
    encoder = registry.build("encoder", {"name": "whisper", "name_or_path": str(path), "num_windows": 2}).eval()
    # One window is the model's fixed input: max_source_positions * 2 mel frames of 160 samples.
    assert (encoder.window_samples, encoder.tokens_per_window, encoder.hidden_size) == (16000, 50, 32)
    assert encoder.num_features == 100
    clip = tmp_path / "clip.wav"
    sf.write(clip, sine(440.0, 1.5, 16000), 16000)
    item = encoder.preprocess(str(clip))
    wave = load_audio(clip, 16000)  # 16-bit samples, as written
    windows = [wave[:16000].numpy(), torch.nn.functional.pad(wave[16000:], (0, 8000)).numpy()]
    expected_features = WhisperFeatureExtractor.from_pretrained(path)(
        windows, sampling_rate=16000, max_length=16000, return_tensors="pt").input_features
    torch.testing.assert_close(item, expected_features, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        expected = model.encoder(expected_features).last_hidden_state.reshape(1, 100, 32)
        torch.testing.assert_close(encoder(item[None]), expected, atol=1e-5, rtol=1e-4)
        second_layer = registry.build("encoder", {"name": "whisper", "name_or_path": str(path), "layer": 1}).eval()
        states = model.encoder(expected_features[:1], output_hidden_states=True).hidden_states
        torch.testing.assert_close(second_layer(item[:1][None]), states[1], atol=1e-5, rtol=1e-4)


def test_wav2vec2_and_hubert_loaded_by_path_equal_the_hf_model(tmp_path):
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    clip = tmp_path / "clip.wav"
    sf.write(clip, sine(220.0, 0.4, 22050), 22050)  # resampled to 16 kHz
    for model_type in ("wav2vec2", "hubert"):
        torch.manual_seed(0)
        spec = {**WAV2VEC2, "model_type": model_type}
        model = AutoModel.from_config(AutoConfig.for_model(**spec)).eval()
        path = tmp_path / model_type
        model.save_pretrained(path)
        Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(path)
        encoder = registry.build("encoder", {"name": "wav2vec2", "name_or_path": str(path), "window_seconds": 0.5}).eval()
        item = encoder.preprocess(str(clip))
        assert item.shape == (1, 8000)
        wave = load_audio(clip, 16000)
        padded = torch.nn.functional.pad(wave, (0, 8000 - wave.numel()))
        normalised = (padded - padded.mean()) / torch.sqrt(padded.var(unbiased=False) + 1e-7)
        torch.testing.assert_close(item[0], normalised, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(encoder(item[None]), model(item).last_hidden_state, atol=1e-5, rtol=1e-4)
        assert encoder.num_features == int(model._get_feat_extract_output_lengths(torch.tensor(8000)))


def test_hf_audio_errors_name_the_problem(tmp_path):
    from transformers import CLIPVisionConfig

    with pytest.raises(ConfigError, match="set exactly one of name_or_path"):
        registry.build("encoder", {"name": "whisper"})
    with pytest.raises(ConfigError, match=r"cannot load its config"):
        registry.build("encoder", {"name": "whisper", "name_or_path": str(tmp_path / "nothing")})
    CLIPVisionConfig(hidden_size=32, num_attention_heads=2).save_pretrained(tmp_path / "clip")
    with pytest.raises(ConfigError, match=r"model_type 'clip_vision_model' is not one of whisper"):
        registry.build("encoder", {"name": "whisper", "name_or_path": str(tmp_path / "clip")})
    with pytest.raises(ConfigError, match=r"model_type 'whisper' is not one of wav2vec2, hubert"):
        registry.build("encoder", {"name": "wav2vec2", "config": WHISPER})
    with pytest.raises(ConfigError, match=r"unknown key 'num_window'"):
        registry.build("encoder", {**TINY, "num_window": 2})


def test_audio_conversations_train_through_the_core(tmp_path):
    """LLaVA records with an `audio` field -> examples with expanded <audio> -> collator -> a loss that trains."""
    from mmadapt.config import DataConfig, ModelConfig, from_dict
    from mmadapt.data.loading import load_data
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    train_word_tokenizer(["is it high or low ?", "high low"], tmp_path / "tok", extra_tokens=["<audio>"])
    for name, freq in (("high", 3000.0), ("low", 200.0)):
        sf.write(tmp_path / f"{name}.wav", sine(freq, 0.5, 22050), 22050)
    records = [{"id": str(i), "audio": f"{name}.wav", "conversations": [
        {"from": "human", "value": "<audio>\nis it high or low?"}, {"from": "gpt", "value": name}]}
        for i, name in enumerate(["high", "low"] * 4)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    llm = tiny_llm_config("llama", hidden=32, layers=1, heads=2, max_positions=128)
    model = MultimodalLM.from_config(from_dict(ModelConfig, {
        "llm": {"config": llm, "tokenizer": str(tmp_path / "tok")},
        "encoders": {"audio": TINY}, "connectors": {"audio": {"name": "linear"}}}))
    train, _, collator, _ = load_data(model.tokenisation_spec(), DataConfig(train=str(tmp_path / "train.jsonl"), max_length=64))
    batch = collator(train[:4])
    assert batch["media"]["audio"].shape == (4, 1, 16, 50)
    assert int((batch["input_ids"] == model.placeholder_id("audio")).sum()) == 4 * model.num_media_tokens("audio")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    # A corrupt audio file is reported with the sample that names it, before training.
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 10)
    bad = {**records[0], "audio": "bad.wav"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1.*bad\.wav"):
        load_data(model.tokenisation_spec(), DataConfig(train=str(tmp_path / "bad.jsonl"), max_length=64))
