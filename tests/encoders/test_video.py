"""Video encoder: which frames are sampled from real mp4 files, aggregation over time, and bad files and configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import encoder_cases  # noqa: F401  (imports cases_video through its extension point; importing that first is circular)
from cases_video import mp4_file

from mmadapt import registry
from mmadapt.encoders.video import decode_frames
from mmadapt.errors import ConfigError, DataError
from mmadapt.quickstart.motion import write_video
from mmadapt.quickstart.tiny import tiny_vit_encoder

FRAME_ENCODER = tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1)
QFORMER = {"name": "qformer", "num_query_tokens": 3, "num_layers": 1, "hidden_size": 32, "num_heads": 2,
           "intermediate_size": 64}
RESAMPLER = {"name": "resampler", "num_latents": 5, "depth": 1, "num_heads": 2, "head_dim": 16, "num_kv_heads": 1}
STEP = 15  # frame i of a ramp clip is flat grey at brightness STEP * i


def ramp_clip(path: Path, frames: int = 16, fps: int = 8) -> Path:
    """A clip whose frames tell their index: frame i is flat grey at STEP * i."""
    write_video(path, [np.full((16, 16, 3), STEP * i, dtype=np.uint8) for i in range(frames)], fps=fps)
    return path


def frame_numbers(frames: list) -> list[int]:
    return [round(float(np.asarray(frame, dtype=np.float32).mean()) / STEP) for frame in frames]  # lossy codec: round


def video_encoder(**options) -> torch.nn.Module:
    return registry.build("encoder", {"name": "video", "frame_encoder": FRAME_ENCODER, **options}).eval()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return ramp_clip(tmp_path_factory.mktemp("video") / "ramp.mp4")


@pytest.mark.parametrize("num_frames, expected", [(4, [0, 5, 10, 15]), (3, [0, 8, 15]), (1, [8]),
                                                  (16, list(range(16)))])
def test_uniform_sampling_spans_the_clip_first_and_last_included(clip, num_frames, expected):
    assert frame_numbers(decode_frames(str(clip), num_frames, None)) == expected
    assert frame_numbers(decode_frames(clip.read_bytes(), num_frames, None)) == expected  # in-memory bytes too


@pytest.mark.parametrize("fps, num_frames, expected", [(2.0, 4, [0, 4, 8, 12]), (3.0, 4, [0, 2, 5, 8]),
                                                       (8.0, 3, [0, 1, 2]), (4.0, 8, [0, 2, 4, 6, 8, 10, 12, 14])])
def test_fps_sampling_takes_frames_at_that_rate_from_the_start(clip, fps, num_frames, expected):
    # 16 frames at 8 fps: the frame shown at time k / fps is floor(k * 8 / fps)
    assert frame_numbers(decode_frames(str(clip), num_frames, fps)) == expected


def test_preprocess_stacks_the_sampled_frames_in_order(clip):
    pixels = video_encoder(num_frames=4).preprocess(str(clip))
    assert pixels.shape == (4, 3, 16, 16)
    brightness = pixels.mean(dim=(1, 2, 3))
    assert torch.all(brightness[1:] > brightness[:-1])  # the ramp, darkest first


@pytest.fixture(scope="module")
def batch(clip) -> torch.Tensor:
    return video_encoder(num_frames=4).preprocess(str(clip))[None]  # [1, T, C, H, W]


@pytest.mark.parametrize("aggregate, tokens", [("concat", lambda n: 4 * n), ("mean", lambda n: n),
                                               (QFORMER, lambda n: 3), (RESAMPLER, lambda n: 5)],
                         ids=["concat", "mean", "qformer", "resampler"])
def test_each_aggregate_gives_its_number_of_tokens(batch, aggregate, tokens):
    encoder = video_encoder(num_frames=4, aggregate=aggregate)
    frame_tokens = encoder.frame_encoder.num_features
    assert encoder.num_features == tokens(frame_tokens)
    with torch.no_grad():
        out = encoder(torch.cat([batch, batch.flip(1)]))
    assert out.shape == (2, tokens(frame_tokens), 32)


def by_frame(out: torch.Tensor, frames: int) -> torch.Tensor:
    return out.view(out.shape[0], frames, -1, out.shape[-1])  # concat output [B, T*N, D] -> [B, T, N, D]


def test_concat_without_temporal_embeddings_only_reorders_frame_blocks(batch):
    encoder = video_encoder(num_frames=4, aggregate="concat", temporal_embedding="none")
    with torch.no_grad():
        forward, backward = encoder(batch), encoder(batch.flip(1))
    torch.testing.assert_close(by_frame(backward, 4), by_frame(forward, 4).flip(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temporal", ["sinusoidal", "learned"])
def test_concat_temporal_embeddings_make_order_matter(batch, temporal):
    encoder = video_encoder(num_frames=4, aggregate="concat", temporal_embedding=temporal)
    with torch.no_grad():
        forward, backward = encoder(batch), encoder(batch.flip(1))
    # the same frames played backwards are not just the same tokens reordered: each frame's tokens carry its time
    assert not torch.allclose(by_frame(backward, 4), by_frame(forward, 4).flip(1), atol=1e-4)
    assert not torch.allclose(backward, forward, atol=1e-4)


def test_mean_pool_is_order_invariant(batch):
    encoder = video_encoder(num_frames=4, aggregate="mean")
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch.flip(1)), encoder(batch), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(encoder(batch[:, :1].expand_as(batch)), encoder(batch), atol=1e-4)  # not constant


@pytest.mark.parametrize("aggregate", [QFORMER, RESAMPLER], ids=["qformer", "resampler"])
def test_connector_aggregates_see_order_only_through_positions(batch, aggregate):
    with torch.no_grad():
        unordered = {**aggregate, "positions": "none"}
        plain = video_encoder(num_frames=4, aggregate=unordered, temporal_embedding="none")
        torch.testing.assert_close(plain(batch.flip(1)), plain(batch), atol=1e-5, rtol=1e-5)  # attention over a set
        timed = video_encoder(num_frames=4, aggregate=unordered)  # the video encoder's temporal embeddings
        assert not torch.allclose(timed(batch.flip(1)), timed(batch), atol=1e-5)
        ordered = video_encoder(num_frames=4, aggregate=aggregate, temporal_embedding="none")  # the connector's own
        assert not torch.allclose(ordered(batch.flip(1)), ordered(batch), atol=1e-5)


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, pattern its DataError must match)."""
    good = mp4_file(folder, frames=16).read_bytes()  # mp4: header (moov) at the end, after the frames (mdat)
    files = {
        "truncated": (good[: len(good) // 2], "cannot open video .*truncated.mp4: corrupt or not a video file"),
        "empty": (b"", "cannot open video .*empty.mp4"),
        "text": (b"just some notes\n" * 20, "cannot open video .*text.mp4: corrupt or not a video file"),
    }
    paths = {}
    for name, (data, pattern) in files.items():
        (folder / f"{name}.mp4").write_bytes(data)
        paths[name] = (folder / f"{name}.mp4", pattern)
    sf.write(folder / "audio.wav", np.zeros(8000, dtype=np.float32), 16000)
    paths["audio"] = ((folder / "audio.wav").rename(folder / "audio.mp4"), r"video .*audio.mp4 has no video stream")
    short = ramp_clip(folder / "short.mp4", frames=6)
    paths["short"] = (short, r"video .*short.mp4 has 6 frames, fewer than num_frames=8")
    return paths


@pytest.mark.parametrize("name", ["truncated", "empty", "text", "audio", "short"])
def test_bad_files_raise_data_errors_naming_the_file(tmp_path, name):
    path, pattern = bad_files(tmp_path)[name]
    encoder = video_encoder(num_frames=8)
    with pytest.raises(DataError, match=pattern):
        encoder.preprocess(str(path))
    with pytest.raises(DataError, match=pattern):  # the cheap pre-training check catches it too
        encoder.check(path)


def test_corrupt_frame_data_is_a_decode_error_naming_the_file(tmp_path):
    data = mp4_file(tmp_path, frames=16).read_bytes()
    start, end = data.find(b"mdat") + 8, data.find(b"moov")  # the frames; the header after them stays intact
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(data[:start] + bytes(end - start) + data[end:])
    with pytest.raises(DataError, match=r"cannot decode video .*corrupt.mp4: corrupt data"):
        video_encoder(num_frames=8).preprocess(str(corrupt))


def test_in_memory_bad_bytes_say_so():
    with pytest.raises(DataError, match="cannot open video <in-memory video bytes>"):
        video_encoder(num_frames=2).preprocess(b"")


def test_a_clip_too_short_for_the_fps_sampling_is_an_error_naming_it(clip):
    encoder = video_encoder(num_frames=5, fps=2.0)  # 5 frames at 2 fps: 0 .. 2 s; the clip is 16 frames at 8 fps
    message = r"video .*ramp.mp4 is 2.00 s \(16 frames at 8 fps\); 5 frames at 2 fps need more than 2.00 s"
    with pytest.raises(DataError, match=message):
        encoder.preprocess(str(clip))
    with pytest.raises(DataError, match=message):
        encoder.check(clip)


@pytest.mark.parametrize("options, message", [
    ({"aggregate": "max"}, r"aggregate 'max': valid: concat, mean, or a connector spec"),
    ({"aggregate": {"name": "qformr"}}, r"unknown connector 'qformr' \(did you mean 'qformer'\?\); valid: linear, mlp, "
                                        r"qformer, resampler"),
    ({"aggregate": {"num_query_tokens": 4}}, r"a connector spec needs a 'name' \(e.g. qformer, resampler\)"),
    ({"num_frames": 0}, r"num_frames must be >= 1, got 0"),
    ({"num_frames": "four"}, r"num_frames: expected an integer, got str 'four'"),
    ({"fps": 0}, r"fps must be > 0"),
    ({"temporal_embedding": "rope"}, r"'rope' is not valid; valid: 'sinusoidal', 'learned', 'none'"),
    ({"frame_encoder": {"name": "tiny_audio"}}, r"audio encoder; an image encoder is needed"),
])
def test_bad_configs_raise_config_errors_listing_the_valid_values(options, message):
    with pytest.raises(ConfigError, match=message):
        video_encoder(**options)
