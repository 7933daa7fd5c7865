"""The loss-curve PNG written after training (people would rather look than read)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_loss(log_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Train (and eval) loss against step from log.jsonl; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    for line in Path(log_path).read_text().splitlines() if Path(log_path).is_file() else []:
        row = json.loads(line)
        if "loss" in row:
            train.append((row["step"], row["loss"]))
        if "eval_loss" in row:
            evals.append((row["step"], row["eval_loss"]))
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "training loss")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return Path(out_path)
