"""`train(config)`: the library entry behind `mmadapt train` (stages, data, model, trainer, outputs).

Output directory of a stage: the model (mmadapt_model.yaml, llm/, multimodal.safetensors),
config.yaml as resolved, metrics.json, log.jsonl, loss.png, manifest.json (written last: its
presence marks a complete run), and checkpoints/checkpoint-N for --resume.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from mmadapt import registry
from mmadapt.config import RunConfig, dump, load_run, stage_configs, to_dict
from mmadapt.errors import ConfigError
from mmadapt.io import atomic_write_json

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"


def train(config: RunConfig, resume: bool = False, callbacks: list | None = None) -> dict[str, float]:
    """Run every stage in order (stage k starts from stage k-1's weights); return the last stage's metrics
    plus every stage's metrics prefixed by its name."""
    stages = stage_configs(config)
    previous: Path | None = None
    summary: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for name, stage in stages:
        if previous is not None and stage.model.init_from is None:
            stage.model.init_from = str(previous)
        out = Path(stage.output_dir)
        if resume and name and (out / "manifest.json").is_file() and (out / "metrics.json").is_file():
            import json

            logger.info("stage %s already complete in %s; resuming after it", name, out)
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            if name:
                logger.info("=== stage %s -> %s", name, out)
            metrics = train_stage(stage, resume=resume, callbacks=callbacks, stage=name)
        summary.update({f"{name}/{k}" if name else k: v for k, v in metrics.items()})
        previous = out
    if len(stages) > 1:
        summary.update(metrics)
        atomic_write_json(Path(config.output_dir) / "metrics.json", summary)
        dump(config, Path(config.output_dir) / "config.yaml")
    return summary


def precision_flags(precision: str) -> dict[str, bool]:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(config: RunConfig, checkpoint_dir: Path, has_eval: bool):
    from transformers import TrainingArguments

    t = config.training
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        optim="adamw_torch",
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=t.report_to or "none",
        remove_unused_columns=False,
        dataloader_num_workers=t.dataloader_num_workers,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        **precision_flags(t.precision),
    )


def build_objective(config: RunConfig) -> Any:
    objective = registry.build("objective", config.objective, where="objective")
    formats = getattr(objective, "data_formats", None)
    if formats and config.data.format not in formats:
        raise ConfigError(f"objective {config.objective['name']!r} needs data.format in {list(formats)}, "
                          f"got {config.data.format!r}")
    return objective


def prepare_output(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: fresh). A partial run is never silently overwritten."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = out / CHECKPOINTS
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume:
        if last is None:
            logger.warning("--resume: no checkpoint in %s; starting from the beginning", checkpoints)
        return Path(last) if last else None
    if last is not None and not (out / "manifest.json").is_file():
        raise ConfigError(f"{out} holds an interrupted run ({last}); continue it with --resume, "
                          "or choose another output_dir")
    if checkpoints.is_dir():
        shutil.rmtree(checkpoints)
    for stale in ("log.jsonl",):
        (out / stale).unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with `threads` torch intra-op threads (None: leave them as they are), then restore them."""
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_stage(config: RunConfig, resume: bool = False, callbacks: list | None = None, stage: str = "") -> dict[str, float]:
    with torch_threads(config.training.threads):
        return _train_stage(config, resume, callbacks, stage)


def _train_stage(config: RunConfig, resume: bool, callbacks: list | None, stage: str) -> dict[str, float]:
    from transformers import set_seed

    from mmadapt.data.loading import generate_data, load_data
    from mmadapt.factory import build_model
    from mmadapt.train.freezing import apply_freezing
    from mmadapt.train.trainer import JsonlLogger, MMTrainer

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = prepare_output(out, resume)
    if config.data.generate:
        generate_data(config.data)  # before the model: a generated dataset may carry its tokenizer
    set_seed(config.seed)
    model = build_model(config.model)
    if config.peft is not None:
        from mmadapt.train.peft import apply_peft

        apply_peft(model, config.peft, config.training.train_modules)
    apply_freezing(model, config.training.train_modules)
    if config.training.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    objective = build_objective(config)
    train_data, eval_data, collator, data_stats = load_data(model, config.data)
    if config.data.feature_cache:
        attach_feature_caches(model, config.data.feature_cache, train_data + (eval_data or []))
    if hasattr(objective, "prepare"):
        objective.prepare(model, train_data + (eval_data or []))  # eval pairs may need reference log-probs too
    logger.info("data: %d train / %s eval examples %s", len(train_data), len(eval_data) if eval_data else 0,
                {k: int(v) for k, v in data_stats.items()})

    trainer = MMTrainer(
        model=model,
        args=training_arguments(config, out / CHECKPOINTS, eval_data is not None),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        objective=objective,
        module_lr=config.training.module_lr,
        callbacks=[JsonlLogger(out / "log.jsonl"), *(callbacks or [])],
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start
    tokens = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    metrics: dict[str, float] = {
        "train_loss": float(result.training_loss),
        "train_steps": float(trainer.state.global_step),
        "train_seconds": seconds,
        "train_tokens": float(tokens),
        "train_tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        **data_stats,
    }
    last_train = [h for h in trainer.state.log_history if "loss" in h]
    for key, value in (last_train[-1] if last_train else {}).items():
        if key not in ("loss", "step", "epoch", "learning_rate", "grad_norm") and isinstance(value, (int, float)):
            metrics[f"train_{key}"] = float(value)
    if eval_data is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    if trainer.args.should_save:
        save_outputs(trainer, model, config, out, metrics, stage)
    return metrics


def attach_feature_caches(model: Any, directory: str, examples: list) -> None:
    """Frozen encoders read their features from an on-disk cache (filled now, reused by later epochs and stages)."""
    from mmadapt.data.feature_cache import FeatureCache

    for modality, encoder in model.encoders.items():
        if any(p.requires_grad for p in encoder.parameters()):
            logger.info("feature cache: the %s encoder trains in this stage; encoding on the fly", modality)
            continue
        cache = FeatureCache(directory, encoder)
        items = [item for e in examples for item in getattr(e, "media", {}).get(modality, [])]
        encoded = cache.warm(items, desc=f"feature cache ({modality})")
        logger.info("feature cache %s: %d %s items encoded now, %d already cached", cache.root, encoded, modality,
                    len(set(map(str, items))) - encoded)
        model.feature_caches[modality] = cache


def save_outputs(trainer: Any, model: Any, config: RunConfig, out: Path, metrics: dict[str, float], stage: str) -> None:
    """Model files first (each renamed into place), then config, metrics, plot, and manifest last."""
    from mmadapt.lineage import MANIFEST, write_manifest
    from mmadapt.model import ADAPTER_DIR
    from mmadapt.train.plots import plot_loss

    (out / MANIFEST).unlink(missing_ok=True)  # until the new manifest lands, the directory is "in progress"
    staging = out / ".staging-model"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, atomic=False)
    if not (staging / ADAPTER_DIR).exists():
        shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.is_dir() and entry.is_dir():
            old = out / f".old-{entry.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(entry, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, target)
    shutil.rmtree(staging, ignore_errors=True)
    dump(config, out / "config.yaml")
    atomic_write_json(out / "metrics.json", metrics)
    plot_loss(out / "log.jsonl", out / "loss.png", title=f"{stage or out.name}: loss")
    base = config.model.vlm.name_or_path if config.model.vlm else config.model.llm.name_or_path
    inputs = [p for p in (config.model.init_from, base) if p]
    write_manifest(out, kind="training" + (f":{stage}" if stage else ""), config=to_dict(config), inputs=inputs,
                   extra={"metrics": metrics, "objective": config.objective.get("name")})
    logger.info("saved %s (loss curve: %s)", out, out / "loss.png")


def run_cli(args: argparse.Namespace) -> int:
    config = load_run(args.config, args.set)
    try:
        metrics = train(config, resume=args.resume)
        end_process_group(wait=True)
    finally:
        end_process_group(wait=False)  # after an error: close without waiting for ranks that may be gone
    print_table(metrics, title=f"mmadapt train: {config.output_dir}")
    return 0


def end_process_group(wait: bool) -> None:
    """Under `accelerate launch`: (wait for every rank: rank 0 may still be saving, then) close the group.
    A rank that exits with its gloo/NCCL threads still running can abort ("terminate called without an
    active exception", seen at exit in the 2-process test)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def print_table(metrics: dict[str, float], title: str = "") -> None:
    width = max((len(k) for k in metrics), default=10)
    if title:
        print(f"\n{title}")
    print("-" * (width + 16))
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:>12.4f}" if isinstance(value, float) else f"{key:<{width}}  {value:>12}")
    print("-" * (width + 16))


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a YAML run config")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=run_cli)
