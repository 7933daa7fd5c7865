"""MMTrainer: the one training loop (a transformers.Trainer) for every objective.

It overrides only what mmadapt needs: the loss (delegated to the objective), evaluation (the
objective's loss and metrics), metric logging, and saving (MultimodalLM checkpoints, written
into a staging directory and renamed, so a killed run never leaves a half-written checkpoint).
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from mmadapt.interfaces import Objective
from mmadapt.io import replace_directory

STAGING = ".staging"


class MMTrainer(Trainer):
    def __init__(self, *args: Any, objective: Objective, module_lr: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        # Every objective scores position t against label t+1 (objectives/base.py), so the token count that
        # normalises the loss over an accumulation window is taken over labels[..., 1:]. transformers infers this
        # only for models whose loss_type it knows as causal; for MultimodalLM it counted position 0 too, and a
        # `format: text` loss came out (L-1)/L too small, gradients with it (issue 13, part 12).
        self._loss_shifts_labels = True
        self.module_lr = dict(module_lr or {})
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ---------------------------------------------------------------- loss and metrics
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        loss, metrics = self.objective.loss(model, inputs, num_items_in_batch=num_items_in_batch)
        self._record("train" if model.training else "eval", metrics)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's tokens; DDP averages gradients, so undo the 1/world.
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, metrics = self.objective.loss(model, inputs)
        self._record("eval", metrics)
        return loss.detach(), None, None

    def _record(self, mode: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[f"{prefix}{key}"] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ---------------------------------------------------------------- optimiser
    def create_optimizer(self, model: torch.nn.Module | None = None):
        """AdamW with one parameter group per `training.module_lr` entry (a part or a name prefix)."""
        if not self.module_lr or self.optimizer is not None:
            return super().create_optimizer()
        from mmadapt.errors import ConfigError

        model = self.model
        group_of = getattr(model, "parameter_group", None) or (lambda name: name.split(".", 1)[0])
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = defaultdict(list)
        used: set[str] = set()
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            key = next((k for k in self.module_lr if group_of(name) == k or name.startswith(k)), None)
            lr = self.module_lr[key] if key is not None else self.args.learning_rate
            if key is not None:
                used.add(key)
            groups[(lr, self.args.weight_decay if name in decay else 0.0)].append(param)
        unused = sorted(set(self.module_lr) - used)
        if unused:
            raise ConfigError(f"training.module_lr: {unused} match no trainable parameter; use encoders, connectors, "
                              "llm or a parameter-name prefix of a part that trains")
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(
            [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()], **kwargs)
        return self.optimizer

    # ---------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir or self.args.output_dir, atomic=False)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:  # a sharded checkpoint (pytorch_model_fsdp_0/): accelerate's loader reads it
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.accelerator.unwrap_model(model or self.model).load_weights_from(resume_from_checkpoint, adapters=True)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Write checkpoint-N into OUTPUT/.staging, then rename it into place (atomic)."""
        run_dir = Path(self._get_output_dir(trial=trial))
        staging = run_dir / STAGING
        original = self.args.output_dir
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial=None)
        finally:
            self.args.output_dir = original
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            replace_directory(staging / name, run_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()


class JsonlLogger(TrainerCallback):
    """Appends every log event as one JSON line (train and eval), for people and plots."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF callback signature
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
