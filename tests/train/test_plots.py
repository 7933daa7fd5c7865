"""The loss plot: short stages still show their loss; preference runs get rewards, margin and accuracy beside it."""

import json

from PIL import Image

from mmadapt.train.plots import plot_loss


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_stage_shorter_than_logging_steps_still_plots_its_loss(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [{"step": 3, "epoch": 1.0, "train_loss": 2.5, "train_runtime": 0.1}])
    assert plot_loss(log, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert Image.open(tmp_path / "loss.png").size == (770, 440)


def test_preference_runs_get_a_rewards_panel(tmp_path):
    rows = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards_chosen": 0.1 * s, "rewards_rejected": -0.1 * s,
             "rewards_margin": 0.2 * s, "preference_accuracy": min(1.0, 0.5 + 0.1 * s)} for s in range(1, 6)]
    plot_loss(write_log(tmp_path / "log.jsonl", rows), tmp_path / "dpo.png")
    assert Image.open(tmp_path / "dpo.png").size == (1320, 440)  # two panels


def test_nothing_logged_means_no_plot(tmp_path):
    assert plot_loss(write_log(tmp_path / "log.jsonl", []), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
