"""Reference-model strategies for DPO-family objectives: a frozen copy, the base with adapters off, or cached log-probs.

- `copy`: a frozen deep copy of the model at the start of training (memory: a second model).
- `adapters_off`: the policy itself with its LoRA/DoRA layers switched off (peft's disable_adapter
  mechanism): no second model, one extra forward. Exact only when nothing but adapters trains.
- `precomputed`: reference log-probs of every sample computed once in `prepare` and cached,
  keyed by the sample's key ("file:line"); no reference forward during training.
- `auto`: `adapters_off` when the model has adapters and nothing else trains, else `copy`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from mmadapt.adapters import adapters_disabled, has_adapters, is_adapter_parameter
from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)

# fn(model, batch) -> per-row tensors ([B] each), e.g. (chosen summed log-probs, rejected summed log-probs)
ReferenceFn = Callable[[Any, dict[str, Any]], tuple[torch.Tensor, ...]]

STRATEGIES = ("auto", "copy", "adapters_off", "precomputed")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the reference forward, the training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def trains_outside_adapters(model: torch.nn.Module) -> list[str]:
    """Names of trainable parameters that are not adapter weights (they would make `adapters_off` drift)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and not is_adapter_parameter(n)]


def resolve_strategy(strategy: str, model: torch.nn.Module) -> str:
    """Turn `auto` into a concrete strategy and check that `adapters_off` has adapters to switch off."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"objective.reference: {strategy!r} is not valid; valid: {', '.join(STRATEGIES)}")
    if strategy == "auto":
        strategy = "adapters_off" if has_adapters(model) and not trains_outside_adapters(model) else "copy"
        logger.info("reference model strategy (auto): %s", strategy)
    if strategy == "adapters_off":
        if not has_adapters(model):
            raise ConfigError("objective.reference: adapters_off needs adapters (set a `peft:` section); "
                              "otherwise use copy or precomputed")
        drifting = trains_outside_adapters(model)
        if drifting:
            logger.warning(
                "reference adapters_off: %d non-adapter parameters also train (e.g. %s), so the reference drifts "
                "with them; use reference: copy or precomputed for an exact reference",
                len(drifting), drifting[0],
            )
    return strategy


class FrozenCopyReference:
    """A frozen deep copy of the model taken when it is built."""

    name = "copy"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.model.requires_grad_(False)

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], fn: ReferenceFn) -> tuple[torch.Tensor, ...]:
        device = _device(model)
        if _device(self.model) != device:  # the Trainer moves the policy after prepare()
            self.model.to(device)
        with torch.no_grad():
            return tuple(t.detach() for t in fn(self.model, batch))


class AdaptersOffReference:
    """The policy with its adapters switched off for one no-grad forward."""

    name = "adapters_off"

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], fn: ReferenceFn) -> tuple[torch.Tensor, ...]:
        with torch.no_grad(), adapters_disabled(model), eval_mode(model):
            return tuple(t.detach() for t in fn(model, batch))


class PrecomputedReference:
    """Reference log-probs looked up by sample key; filled once by `compute` before training."""

    name = "precomputed"

    def __init__(self) -> None:
        self.cache: dict[str, torch.Tensor] = {}  # sample key -> [n_outputs] float32 on CPU

    def compute(self, model: torch.nn.Module, batches: Iterable[dict[str, Any]], fn: ReferenceFn,
                total: int | None = None) -> None:
        """Run `fn` over every batch with the model as it is now (the reference) and cache the per-row results."""
        # Adapters are switched off too: a freshly initialised LoRA is a no-op, a loaded one is not the reference.
        with torch.no_grad(), adapters_disabled(model), eval_mode(model):
            for batch in tqdm(batches, total=total, desc="reference log-probs", leave=False):
                batch = _to_device(batch, _device(model))
                outputs = torch.stack([t.detach().float().cpu() for t in fn(model, batch)], dim=1)  # [B, n_outputs]
                for key, row in zip(batch["ids"], outputs):
                    self.cache[key] = row

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], fn: ReferenceFn) -> tuple[torch.Tensor, ...]:
        missing = [key for key in batch["ids"] if key not in self.cache]
        if missing:
            raise ConfigError(
                f"reference: precomputed has no reference log-probs for {missing[:3]} ({len(missing)} samples): "
                "prepare() must see every train and eval record; use reference: copy or adapters_off otherwise"
            )
        stacked = torch.stack([self.cache[key] for key in batch["ids"]]).to(_device(model))  # [B, n_outputs]
        return tuple(stacked.unbind(dim=1))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return {k: move(v) for k, v in batch.items()}


def build_reference(
    strategy: str,
    model: torch.nn.Module,
    fn: ReferenceFn,
    records: list[Any] | None = None,
    collator: Callable[[list[Any]], dict[str, Any]] | None = None,
    batch_size: int = 8,
) -> FrozenCopyReference | AdaptersOffReference | PrecomputedReference:
    """The reference for `strategy` (after `resolve_strategy`); `precomputed` needs the examples and their collator."""
    strategy = resolve_strategy(strategy, model)
    if strategy == "copy":
        return FrozenCopyReference(model)
    if strategy == "adapters_off":
        return AdaptersOffReference()
    if records is None or collator is None:
        raise ConfigError("objective.reference: precomputed needs prepare(model, examples, collator) before training")
    reference = PrecomputedReference()
    batches = (collator(records[i : i + batch_size]) for i in range(0, len(records), batch_size))
    reference.compute(model, batches, fn, total=(len(records) + batch_size - 1) // batch_size)
    logger.info("precomputed reference log-probs for %d samples", len(reference.cache))
    return reference
