"""`export(model_dir, out)`: a standalone mmadapt checkpoint, LoRA adapters merged (behind `mmadapt export`)."""

from __future__ import annotations

import logging
from pathlib import Path

from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)


def export(model_dir: str | Path, out: str | Path, merge: bool = True, overwrite: bool = False) -> Path:
    """Write a standalone copy of an mmadapt checkpoint, adapters merged when `merge` (lineage: parent = model_dir).
    An existing `out` is replaced only if it is an earlier export and `overwrite` is set."""
    from mmadapt.io import check_output_dir
    from mmadapt.model import MODEL_CONFIG_FILE, MultimodalLM
    from mmadapt.adapters import has_adapters, merge_adapters

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / MODEL_CONFIG_FILE).is_file():
        raise ConfigError(f"--model {model_dir}: not an mmadapt checkpoint (no {MODEL_CONFIG_FILE})")
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out {out}: must differ from --model")
    check_output_dir(out, "export", overwrite)
    model = MultimodalLM.from_pretrained(model_dir)
    had_adapters = has_adapters(model)
    if merge:
        merge_adapters(model)
    model.save_pretrained(out, manifest={
        "kind": "export", "config": {"merge_adapters": merge, "had_adapters": had_adapters}, "inputs": [model_dir],
    })
    logger.info("exported %s -> %s%s", model_dir, out, " (adapters merged)" if merge and had_adapters else "")
    return out
