"""`train(config)`: the library entry behind `mmadapt train` (stages, data, model, trainer, outputs).

Output directory of a stage: the model (mmadapt_model.yaml, llm/, multimodal.safetensors),
config.yaml as resolved, metrics.json, log.jsonl, loss.png, manifest.json (written last: its
presence marks a complete run), and checkpoints/checkpoint-N for --resume.

One writer at a time (a lock beside the directory). While a run trains, only checkpoints/ (with the
run's log.jsonl) changes; the finished output is assembled beside the directory and replaces it in
one rename, so a run killed at any point leaves the previous output whole. An existing output is
replaced only with --overwrite, and never when it holds files mmadapt did not write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from mmadapt import registry
from mmadapt.config import RunConfig, dump, stage_configs, to_dict
from mmadapt.errors import ConfigError, DataError
from mmadapt.interfaces import PreparedObjective
from mmadapt.io import atomic_directory, atomic_write_json, check_output_dir, clean_stale, writer_lock

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
RUN_LOG = "log.jsonl"  # in checkpoints/ while the run trains, at the top of the finished output
# What a stage writes (encoders/: files an encoder's reload_spec saves); an earlier output predating
# manifest `outputs` may hold these and nothing else to be replaced.
TRAINING_LAYOUT = {"mmadapt_model.yaml", "llm", "llm_adapter", "multimodal.safetensors", "encoders", "config.yaml",
                   "metrics.json", RUN_LOG, "loss.png", CHECKPOINTS}


def train(config: RunConfig, resume: bool = False, callbacks: list | None = None,
          overwrite: bool = False) -> dict[str, float]:
    """Run every stage in order (stage k starts from stage k-1's weights); return the last stage's metrics
    plus every stage's metrics prefixed by its name. `overwrite`: replace earlier training outputs."""
    stages = stage_configs(config)
    if len(stages) > 1:
        check_stages_root(Path(config.output_dir), [name for name, _ in stages], resume, overwrite,
                          inputs_inside(config, Path(config.output_dir)))
    previous: Path | None = None
    summary: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for i, (name, stage) in enumerate(stages):
        # Stage k starts from stage k-1 unless the stage itself names another checkpoint (a run-level init_from
        # starts the first stage only).
        own_start = isinstance(config.stages[i].get("model") if config.stages else None, dict) and \
            "init_from" in config.stages[i]["model"]
        if previous is not None and not own_start:
            stage.model.init_from = str(previous)
        out = Path(stage.output_dir)
        if resume and name and (out / "manifest.json").is_file() and (out / "metrics.json").is_file():
            import json

            logger.info("stage %s already complete in %s; resuming after it", name, out)
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            if name:
                logger.info("=== stage %s -> %s", name, out)
            metrics = train_stage(stage, resume=resume, callbacks=callbacks, stage=name, overwrite=overwrite)
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


def training_arguments(config: RunConfig, checkpoint_dir: Path, has_eval: bool, extra: dict | None = None):
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
        full_determinism=t.deterministic,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        **precision_flags(t.precision),
        **(extra or {}),  # training.distributed: fsdp / fsdp_config / deepspeed
    )


def build_objective(config: RunConfig) -> Any:
    objective = registry.build("objective", config.objective, where="objective")
    formats = objective.data_formats
    if config.data.format not in formats:
        raise ConfigError(f"objective {config.objective['name']!r} needs data.format in {list(formats)}, "
                          f"got {config.data.format!r}")
    return objective


def inputs_inside(config: RunConfig, out: Path) -> set[str]:
    """Top-level names under `out` of the run's own inputs (data files, generated data, feature cache, media):
    a config may keep them inside output_dir; they are the user's, kept in place by every write."""
    data = config.data
    paths = [*(data.train if isinstance(data.train, list) else [data.train]),
             *(data.eval if isinstance(data.eval, list) else [data.eval]),
             data.media_root, data.feature_cache, data.dataset_info, (data.generate or {}).get("out")]
    root, names = out.resolve(), set()
    for path in paths:
        if isinstance(path, str) and path:
            resolved = Path(path).resolve()
            if root in resolved.parents:
                names.add(resolved.relative_to(root).parts[0])
    return names


def check_stages_root(root: Path, names: list[str], resume: bool, overwrite: bool, keep: set[str]) -> None:
    """A multi-stage output_dir holds its stage folders, config.yaml, metrics.json, the run's own inputs (`keep`)
    and our dot files, nothing else."""
    if not root.is_dir():
        return
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in keep)
    foreign = [e for e in entries if e not in {*names, "config.yaml", "metrics.json"}]
    if foreign:
        raise ConfigError(f"output_dir {root}: holds {', '.join(foreign[:5])}, which mmadapt did not write (stages: "
                          f"{', '.join(names)}); mmadapt never deletes what it did not write: choose a new output_dir")
    if entries and not (resume or overwrite):
        raise ConfigError(f"output_dir {root}: holds an earlier run ({', '.join(entries)}); pass --overwrite to "
                          "replace it, --resume to continue it, or choose a new output_dir")


def prepare_output(out: Path, resume: bool, overwrite: bool = False, keep: frozenset[str] = frozenset()) -> Path | None:
    """The checkpoint to resume from (None: fresh). Refuses, before any work: a partial run without --resume,
    an earlier output without --overwrite, and a directory holding files mmadapt did not write (other than the
    run's own inputs, `keep`, which stay)."""
    from transformers.trainer_utils import get_last_checkpoint

    clean_stale(out)  # a killed run's half-published copy (and a parked previous output put back first)
    checkpoints = out / CHECKPOINTS
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    finished = (out / "manifest.json").is_file()
    if resume and last is not None:
        _refuse_foreign(out, keep)
        return Path(last)
    if resume:
        logger.warning("--resume: no checkpoint in %s; starting from the beginning", checkpoints)
    if last is not None and not finished:
        raise ConfigError(f"{out} holds an interrupted run ({last}); continue it with --resume, "
                          "or choose another output_dir")
    if (not finished and checkpoints.is_dir() and {p.name for p in out.iterdir()} <= {CHECKPOINTS, *keep}
            and all(p.name == RUN_LOG or p.name.startswith(".") for p in checkpoints.iterdir())):
        shutil.rmtree(checkpoints)  # a run killed before its first checkpoint left only its log: start again
    # checkpoints/ of a finished output is its run state (a killed re-run's too): replaced with it
    check_output_dir(out, "training", overwrite, what="output_dir", layout=TRAINING_LAYOUT,
                     ignore={*keep, *([CHECKPOINTS] if finished else [])})
    shutil.rmtree(checkpoints, ignore_errors=True)
    return None


def _foreign(out: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """Files in `out` that no mmadapt training wrote: not among a finished output's recorded `outputs`, or (no
    manifest: an interrupted run) anything but its checkpoints/ and log; the run's inputs (`keep`) aside."""
    from mmadapt.lineage import read_manifest

    if not out.is_dir():
        return []
    manifest = read_manifest(out)
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in keep]
    if manifest is not None and isinstance(manifest.get("outputs"), list):
        ours = set(map(str, manifest["outputs"])) | {"manifest.json"}
        return sorted(f for f in files if f not in ours and Path(f).parts[0] != CHECKPOINTS)
    allowed = TRAINING_LAYOUT if manifest is not None else {CHECKPOINTS, RUN_LOG}
    return sorted(f for f in files if Path(f).parts[0] not in allowed and f != "manifest.json")


def _refuse_foreign(out: Path, keep: frozenset[str]) -> None:
    foreign = _foreign(out, keep)
    if foreign:
        raise ConfigError(f"output_dir {out}: holds files mmadapt did not write ({', '.join(foreign[:5])}); the "
                          "finished run replaces the directory: move them away or choose another output_dir")


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


def train_stage(config: RunConfig, resume: bool = False, callbacks: list | None = None, stage: str = "",
                overwrite: bool = False) -> dict[str, float]:
    # one writer per output_dir; under `accelerate launch` only rank 0 writes it (and takes the lock)
    main_process = os.environ.get("RANK", "0") == "0"
    with writer_lock(config.output_dir) if main_process else contextlib.nullcontext():
        with torch_threads(config.training.threads):
            return _train_stage(config, resume, callbacks, stage, overwrite)


def _train_stage(config: RunConfig, resume: bool, callbacks: list | None, stage: str, overwrite: bool) -> dict[str, float]:
    from transformers import set_seed

    from mmadapt.data.loading import generate_data, load_data
    from mmadapt.factory import build_model
    from mmadapt.train.distributed import (check_distributed, full_state_dict, is_fsdp, require_engine,
                                           training_kwargs, unsharded_model)
    from mmadapt.train.freezing import apply_freezing
    from mmadapt.train.trainer import JsonlLogger, MMTrainer

    out = Path(config.output_dir)
    keep = frozenset(inputs_inside(config, out))
    check_distributed(config)
    resume_from = prepare_output(out, resume, overwrite, keep)
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
    caches = feature_caches(model, config.data.feature_cache) if config.data.feature_cache else {}
    train_data, eval_data, collator, data_stats = load_data(model.tokenisation_spec(), config.data, caches)
    warm_feature_caches(caches, train_data + (eval_data or []))
    if isinstance(objective, PreparedObjective):  # eval pairs may need reference log-probs too
        objective.prepare(model, train_data + (eval_data or []), collator)
    logger.info("data: %d train / %s eval examples %s", len(train_data), len(eval_data) if eval_data else 0,
                {k: int(v) for k, v in data_stats.items()})

    trainer = MMTrainer(
        model=model,
        args=training_arguments(config, out / CHECKPOINTS, eval_data is not None, training_kwargs(config, model)),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        objective=objective,
        module_lr=config.training.module_lr,
        callbacks=[JsonlLogger(out / CHECKPOINTS / RUN_LOG), *(callbacks or [])],
    )
    require_engine(trainer, config)
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except pickle.UnpicklingError as e:  # optimizer/scheduler/RNG state: torch.load(weights_only=True) refused it
        raise DataError(f"{resume_from}: a resume-state file holds more than tensors and plain values, so it is "
                        f"refused (torch.load(weights_only=True)): {str(e)[:300]}") from None
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
    # The objective's own metrics from the last logged step; the Trainer's bookkeeping (its token count and
    # throughput at that step) would be a second, different number under a second name, so it is left out.
    bookkeeping = ("loss", "step", "epoch", "learning_rate", "grad_norm", "num_input_tokens_seen", "total_flos")
    for key, value in (last_train[-1] if last_train else {}).items():
        if key not in bookkeeping and not key.startswith("train_") and isinstance(value, (int, float)):
            metrics[f"train_{key}"] = float(value)
    if eval_data is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    if is_fsdp(trainer):  # sharded parameters: gather them (every rank) into a plain copy that rank 0 saves
        state = full_state_dict(trainer)
        model = unsharded_model(config, state) if trainer.args.should_save else model
    if trainer.args.should_save:
        save_outputs(trainer, model, config, out, metrics, stage, keep)
    return metrics


def feature_caches(model: Any, directory: str) -> dict[str, Any]:
    """modality -> FeatureCache for every frozen encoder: the collator reads their features from the on-disk cache
    (filled by `warm_feature_caches`, reused by later epochs and stages)."""
    from mmadapt.data.feature_cache import FeatureCache

    caches = {}
    for modality, encoder in model.encoders.items():
        if any(p.requires_grad for p in encoder.parameters()):
            logger.info("feature cache: the %s encoder trains in this stage; encoding on the fly", modality)
            continue
        caches[modality] = FeatureCache(directory, encoder)
    return caches


def warm_feature_caches(caches: dict[str, Any], examples: list) -> None:
    """Encode now every item of `examples` that a cache does not hold yet."""
    for modality, cache in caches.items():
        items = [item for e in examples for item in getattr(e, "media", {}).get(modality, [])]
        encoded = cache.warm(items, desc=f"feature cache ({modality})")
        logger.info("feature cache %s: %d %s items encoded now, %d already cached", cache.root, encoded, modality,
                    len(set(map(str, items))) - encoded)


def save_outputs(trainer: Any, model: Any, config: RunConfig, out: Path, metrics: dict[str, float], stage: str,
                 keep: frozenset[str] = frozenset()) -> None:
    """Assemble the finished output beside `out` (model, config, metrics, log, plot, checkpoints, manifest last)
    and replace `out` with it in one rename: killed at any point, `out` holds the previous output whole.
    The run's inputs kept inside `out` (`keep`) move along as hard links (copies across filesystems)."""
    from mmadapt.lineage import write_manifest
    from mmadapt.train.plots import plot_loss

    run_dir = out / CHECKPOINTS
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, atomic=False)
        dump(config, tmp / "config.yaml")
        atomic_write_json(tmp / "metrics.json", metrics)
        if run_dir.is_dir():
            # hard links: instant and no extra space; the run's own files stay in place until the rename
            # leaves out the staging and stale entries beside the checkpoints, never a checkpoint's own hidden files
            # (a sharded FSDP checkpoint's torch.distributed.checkpoint `.metadata`: without it, no resume)
            shutil.copytree(run_dir, tmp / CHECKPOINTS, copy_function=_link_or_copy,
                            ignore=lambda folder, names: [n for n in names if n.startswith(".")] if Path(folder) == run_dir else [])
            log = tmp / CHECKPOINTS / RUN_LOG
            if log.is_file():
                os.replace(log, tmp / RUN_LOG)
            if not any((tmp / CHECKPOINTS).iterdir()):
                (tmp / CHECKPOINTS).rmdir()
        plot_loss(tmp / RUN_LOG, tmp / "loss.png", title=f"{stage or out.name}: loss")
        base = (config.model.vlm.name_or_path if config.model.vlm
                else config.model.llm.name_or_path if config.model.llm else None)
        inputs = [p for p in (config.model.init_from, base) if p]
        write_manifest(tmp, kind="training" + (f":{stage}" if stage else ""), config=to_dict(config), inputs=inputs,
                       extra={"metrics": metrics, "objective": config.objective.get("name")}, final_path=out)
        for name in sorted(keep):  # the user's inputs: carried over, not recorded as outputs
            source = out / name
            if source.is_dir():
                shutil.copytree(source, tmp / name, copy_function=_link_or_copy, symlinks=True)
            elif source.exists():
                _link_or_copy(str(source), str(tmp / name))
        for rel in _foreign(out, keep):  # appeared during the run: kept (never ours to delete), not recorded
            logger.warning("%s: %s was not written by mmadapt; kept in the new output", out, rel)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(str(out / rel), str(tmp / rel))
    logger.info("saved %s (loss curve: %s)", out, out / "loss.png")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links unsupported
        shutil.copy2(src, dst)
