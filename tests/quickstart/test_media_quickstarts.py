"""The vlm, audio and video quickstarts: the shared recipe on shrunken data (fast), the CLI's choices, the example
config that reproduces the vlm run, and (slow) each full run meeting the issue's target through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmadapt.config import read_yaml
from mmadapt.quickstart.media_qa import packaged_config, run_media_qa

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
MODALITY = {"vlm": "image", "audio": "audio", "video": "video"}
# Shrunken runs: a few dozen generated items, a handful of steps per stage, so only the plumbing is exercised.
SMALL = {
    "vlm": ["data.generate.n_train=48", "data.generate.n_eval=8", "training.eval_steps=0"],
    "audio": ["data.generate.n_train=32", "data.generate.n_eval=8", "training.dataloader_num_workers=0"],
    "video": ["data.generate.n_train=24", "data.generate.n_eval=6", "training.dataloader_num_workers=0"],
}
FAST_STAGES = ["training.batch_size=8", "stages.0.training.epochs=1", "stages.1.training.epochs=1"]


@pytest.mark.parametrize("task", ["vlm", "audio", "video"])
def test_recipe_writes_metrics_stages_and_lineage(tmp_path, task):
    from mmadapt.lineage import read_manifest
    from mmadapt.model import MultimodalLM

    out = tmp_path / task
    metrics = run_media_qa(packaged_config(task), out, overrides=SMALL[task] + FAST_STAGES, title=task)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("eval_accuracy_before", "eval_accuracy", "train_seconds", "train_tokens_per_second"):
        assert isinstance(saved[key], float), key
    assert 0.0 <= saved["eval_accuracy"] <= 1.0 and saved["train_seconds"] > 0 and saved["train_tokens_per_second"] > 0
    for stage in ("stage1-align", "stage2-instruct"):
        assert (out / stage / "loss.png").stat().st_size > 0 and (out / stage / "metrics.json").is_file()
    # stage 2 starts from stage 1: its manifest names stage 1's as a parent
    parents = read_manifest(out / "stage2-instruct")["parents"]
    assert any(p.get("kind") == "training:stage1-align" for p in parents)
    model = MultimodalLM.from_pretrained(out / "stage2-instruct")
    assert list(model.encoders) == [MODALITY[task]]


def test_generated_data_is_deterministic(tmp_path):
    from mmadapt.quickstart import motion, shapes, tones

    for name, generate, kwargs in (("shapes", shapes.generate, {}), ("tones", tones.generate, {}),
                                   ("motion", motion.generate, {"size": 16, "square": 4, "step": 1})):
        for copy in ("a", "b"):
            generate(tmp_path / name / copy, seed=3, n_train=6, n_eval=2, **kwargs)
        first = (tmp_path / name / "a" / "train.jsonl").read_text()
        assert first == (tmp_path / name / "b" / "train.jsonl").read_text(), name
        assert len(first.splitlines()) == 6


def test_video_clips_are_real_mp4_with_the_asked_motion(tmp_path):
    import av
    import numpy as np

    from mmadapt.quickstart import motion

    motion.generate(tmp_path, seed=1, n_train=8, n_eval=2, kinds=["direction"])
    record = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    with av.open(str(tmp_path / record["video"])) as container:
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in container.decode(video=0)]
    assert len(frames) == 8

    def centre(frame: np.ndarray) -> np.ndarray:  # (y, x) of the bright square
        ys, xs = np.nonzero(frame.sum(-1) > 200)
        return np.array([ys.mean(), xs.mean()])

    dy, dx = centre(frames[-1]) - centre(frames[0])
    moved = {"left": -dx, "right": dx, "up": -dy, "down": dy}
    assert max(moved, key=moved.get) == record["conversations"][1]["value"]
    with pytest.raises(ValueError, match="leaves a 32-pixel frame"):
        motion.generate(tmp_path / "bad", square=8, step=4, num_frames=8)


def test_example_config_reproduces_the_vlm_quickstart():
    """README: 'The same run is reproducible as `mmadapt train examples/quickstart_vlm.yaml`'."""
    assert read_yaml(REPO / "examples" / "quickstart_vlm.yaml") == packaged_config("vlm")


def test_cli_refuses_an_unknown_connector_with_the_valid_ones():
    bad = subprocess.run([sys.executable, "-m", "mmadapt.cli", "quickstart", "vlm", "--connector", "qformr"],
                         capture_output=True, text=True, env=ENV)
    assert bad.returncode == 2 and "qformer" in bad.stderr and "resampler" in bad.stderr
    wrong_task = subprocess.run([sys.executable, "-m", "mmadapt.cli", "quickstart", "merge", "--connector", "mlp"],
                                capture_output=True, text=True, env=ENV)
    assert wrong_task.returncode == 2 and "vlm" in wrong_task.stderr


@pytest.mark.slow
@pytest.mark.parametrize("task, connector", [("vlm", None), ("vlm", "qformer"), ("vlm", "resampler"),
                                             ("audio", None), ("video", None)])
def test_quickstart_meets_its_target(tmp_path, task, connector):
    """The issue's target: held-out exact match >= 0.9 (within 5 minutes on 2 cores: see the README's figures)."""
    command = [sys.executable, "-m", "mmadapt.cli", "quickstart", task, "--out", str(tmp_path / task)]
    done = subprocess.run(command + (["--connector", connector] if connector else []),
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / task / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.9 > metrics["eval_accuracy_before"]
