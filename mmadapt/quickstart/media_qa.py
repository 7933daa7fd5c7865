"""The shared recipe of the media QA quickstarts (vlm, audio, video): accuracy before, train, accuracy after."""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mmadapt.config import RunConfig, read_yaml, stage_configs
from mmadapt.run_config import load_run
from mmadapt.io import atomic_write_json

logger = logging.getLogger(__name__)

# --connector takes any registered connector (with its defaults); these entries size some for the tiny tasks (16 patch tokens per image or frame in), with
# the run overrides each needs. The query-based connectors start with wider random weights (init_std): at
# BERT's 0.02 their queries attend almost uniformly, averaging away where things are, and "where is the
# shape?" stayed near chance (0.85 overall for the Q-Former, 0.55 for the resampler); they also need a gentler
# stage-2 learning rate than the MLP (at 0.003 the resampler stalled even with init_std 0.1).
CONNECTORS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "linear": ({"name": "linear"}, []),
    "mlp": ({"name": "mlp", "depth": 2}, []),
    "qformer": ({"name": "qformer", "num_query_tokens": 16, "num_layers": 2, "hidden_size": 64, "num_heads": 4,
                 "intermediate_size": 128, "cross_attention_every": 1, "init_std": 0.1},
                ["stages.1.training.lr=0.001"]),
    "resampler": ({"name": "resampler", "num_latents": 16, "depth": 2, "num_heads": 4, "head_dim": 16,
                   "num_kv_heads": 2, "init_std": 0.3}, ["stages.1.training.lr=0.001"]),
}


def packaged_config(name: str) -> dict[str, Any]:
    """A quickstart's YAML (shipped in mmadapt/quickstart/configs) as raw data."""
    return read_yaml(Path(str(resources.files("mmadapt.quickstart") / "configs" / f"{name}.yaml")))


def run_packaged(task: str, modality: str, out: Path, connector: str | None = None) -> dict[str, float]:
    """Run the packaged config `task`, with the `modality` connector swapped for `connector` when one is given."""
    raw, overrides = packaged_config(task), []
    if connector is not None:
        from mmadapt import registry

        registry.resolve("connector", connector, where="--connector")  # any registered name; an unknown one lists them
        raw["model"]["connectors"][modality], overrides = CONNECTORS.get(connector, ({"name": connector}, []))
    return run_media_qa(raw, Path(out), overrides, title=f"quickstart {task} (connector: {connector or 'mlp'})")


def run_media_qa(raw_config: dict[str, Any], out: Path, overrides: list[str] | None = None,
                 title: str = "quickstart") -> dict[str, float]:
    """Accuracy before, train every stage, accuracy after; metrics.json and a printed table."""
    from mmadapt.train.run import torch_threads

    config: RunConfig = load_run(raw_config, [f"output_dir={out}", *(overrides or [])])
    with torch_threads(config.training.threads):  # generation before and after training too
        return _run(config, out, title)


def _run(config: RunConfig, out: Path, title: str) -> dict[str, float]:
    from mmadapt.data.loading import generate_data
    from mmadapt.data.records import read_records
    from mmadapt.generate import exact_match
    from mmadapt.model import MultimodalLM
    from mmadapt.cli.train import print_table
    from mmadapt.train.run import train

    generate_data(config.data)
    eval_records = read_records(config.data.eval)
    root = Path(config.data.eval).parent

    torch.manual_seed(config.seed)
    untrained = MultimodalLM.from_config(stage_configs(config)[0][1].model)
    before, _ = exact_match(untrained, eval_records, root, desc="accuracy before training")
    del untrained

    start = time.perf_counter()
    summary = train(config, overwrite=True)  # a re-run replaces its own earlier outputs
    wall = time.perf_counter() - start
    final_dir = Path(stage_configs(config)[-1][1].output_dir)
    model = MultimodalLM.from_pretrained(final_dir)
    after, pairs = exact_match(model, eval_records, root, desc="accuracy after training")
    stage_names = [name for name, _ in stage_configs(config)]
    seconds = sum(summary.get(f"{s}/train_seconds" if s else "train_seconds", 0.0) for s in stage_names)
    tokens = sum(summary.get(f"{s}/train_tokens" if s else "train_tokens", 0.0) for s in stage_names)
    metrics = {
        "eval_accuracy_before": before,
        "eval_accuracy": after,
        "train_seconds": seconds,
        "train_tokens_per_second": tokens / seconds if seconds else 0.0,
        "wall_seconds": wall,
        "eval_examples": float(len(eval_records)),
    }
    for s in stage_names:
        for key in ("train_loss", "eval_loss"):
            full = f"{s}/{key}" if s else key
            if full in summary:
                metrics[full] = summary[full]
    atomic_write_json(out / "metrics.json", metrics)
    print_table(metrics, title=f"{title}  (model: {final_dir})")
    for prediction, reference in pairs[:5]:
        logger.info("sample answer: %r (reference %r)", prediction, reference)
    return metrics
