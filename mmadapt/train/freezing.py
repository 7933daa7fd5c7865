"""Per-stage freezing: exactly the named parts train, and the log says what trains."""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)
GROUPS = ("encoders", "connectors", "llm")


def apply_freezing(model: nn.Module, train_modules: list[str]) -> dict[str, tuple[int, int]]:
    """Train only `train_modules` (groups encoders / connectors / llm, or parameter-name prefixes).

    Adapter parameters added by peft (names containing `lora_`) always train: they exist to be trained.
    Returns {group: (trainable, total)} and logs it as a table.
    """
    from mmadapt.errors import ConfigError

    names = dict(model.named_parameters())
    group_of = getattr(model, "parameter_group", None) or (lambda name: name.split(".", 1)[0])
    for entry in train_modules:
        if entry not in GROUPS and not any(n.startswith(entry) for n in names):
            raise ConfigError(f"training.train_modules: {entry!r} matches no parameters; use {', '.join(GROUPS)} "
                              "or a parameter-name prefix")
    peft_active = any("lora_" in n for n in names)
    for name, param in names.items():
        group = group_of(name)
        if "lora_" in name:
            param.requires_grad = True
        elif ".original_module." in name:
            param.requires_grad = False  # peft's frozen copy of a module it trains fully (modules_to_save)
        elif peft_active and group == "llm" and "llm" in train_modules and "modules_to_save" not in name:
            param.requires_grad = False  # with adapters, "llm" means its adapters
        else:
            param.requires_grad = group in train_modules or any(name.startswith(e) for e in train_modules if e not in GROUPS)
    report: dict[str, tuple[int, int]] = {}
    for name, param in names.items():
        group = group_of(name)
        trainable, total = report.get(group, (0, 0))
        report[group] = (trainable + (param.numel() if param.requires_grad else 0), total + param.numel())
    lines = [f"{'part':<12}{'trainable':>14}{'total':>14}{'%':>8}"]
    for group, (trainable, total) in report.items():
        lines.append(f"{group:<12}{trainable:>14,}{total:>14,}{100 * trainable / max(total, 1):>7.1f}%")
    logger.info("trainable parameters:\n%s", "\n".join(lines))
    if not any(t for t, _ in report.values()):
        raise ConfigError("training.train_modules leaves nothing to train")
    return report
