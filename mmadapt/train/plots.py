"""The loss-curve PNG written after training (people would rather look than read).

Preference runs get a second panel beside the loss: chosen / rejected rewards, their margin and the
preference accuracy, as logged by the objective. A stage too short to log a step still shows its
final mean loss as a point.
"""

from __future__ import annotations

import json
from pathlib import Path

PREFERENCE_KEYS = ("rewards_chosen", "rewards_rejected", "rewards_margin")


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]


def plot_loss(log_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Train (and eval) loss against step from log.jsonl, plus rewards/margin/accuracy for preference objectives;
    None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(log_path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    train, evals = _series(rows, "loss"), _series(rows, "eval_loss")
    if not train:  # fewer steps than logging_steps: the trainer's final summary holds the mean loss
        train = _series(rows, "train_loss")
    if not train and not evals:
        return None
    preference = any(_series(rows, key) for key in PREFERENCE_KEYS)
    fig, axes = plt.subplots(1, 2 if preference else 1, figsize=(12 if preference else 7, 4), dpi=110, squeeze=False)
    ax = axes[0][0]
    few = len(train) < 15  # short stages: markers, or a single point would not show
    if train:
        ax.plot(*zip(*train), "o-" if few else "-", label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for _, v in train + evals):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "training loss")
    if preference:
        right = axes[0][1]
        for key, colour in zip(PREFERENCE_KEYS, ("tab:green", "tab:red", "tab:purple")):
            points = _series(rows, key)
            if points:
                right.plot(*zip(*points), "o-" if few else "-", label=key.replace("_", " "), color=colour)
        right.set_xlabel("step")
        right.set_ylabel("reward")
        right.grid(alpha=0.3)
        accuracy = _series(rows, "preference_accuracy")
        if accuracy:
            twin = right.twinx()
            twin.plot(*zip(*accuracy), "s--" if few else "--", label="preference accuracy", color="tab:gray")
            twin.set_ylim(-0.05, 1.05)
            twin.set_ylabel("preference accuracy")
            twin.legend(loc="lower right")
        right.legend(loc="upper left")
        right.set_title("rewards, margin and preference accuracy")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return Path(out_path)
