"""Re-apply the edits recorded in an edited checkpoint to another model (one derived from the edited model's
base later: merged, LoRA-merged, exported, fine-tuned again), with its own edit record and exact revert.

Two ways: transplant the recorded weight deltas (default: the same change, bit for bit, to tensors of the same
names and shapes), or `recompute` the edit with the recorded method and hyper-parameters on the new model (its
own keys and values: better when the new model has drifted far from the edited one). Either way the output is
an ordinary edited checkpoint: `mmadapt edit revert` restores the new model's weights exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmadapt.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def recorded_requests(edited: str | Path) -> list:
    """The requests of an edited checkpoint, with the old answers its base gave (as recorded)."""
    from mmadapt.editing.checkpoint import read_edit
    from mmadapt.editing.requests import parse_request

    info = read_edit(edited)
    return [parse_request({k: v for k, v in r.items() if k != "where"}, r.get("where") or f"{edited}/edit/edit.json")
            for r in info["requests"]]


def reapply(edited: str | Path, model_dir: str | Path, out: str | Path, overwrite: bool = False,
            recompute: bool = False, allow_weak: bool = False, min_gain: float = 0.5) -> dict[str, Any]:
    """Write `out`: `model_dir` with the edits of `edited` applied; returns the new edit record."""
    import torch
    from safetensors.torch import load_file

    from mmadapt.config import to_dict
    from mmadapt.editing.checkpoint import (DELTAS_FILE, EDIT_DIR, edit_record, load_llm, open_checkpoint, read_edit,
                                            save_edit_record, weights_id, write_edited)
    from mmadapt.editing.evaluate import WeakEditError, describe_weak, edit_outcomes, evaluate
    from mmadapt.io import check_output_dir, output_directory
    from mmadapt.lineage import write_manifest

    edited, model_dir, out = Path(edited), Path(model_dir), Path(out)
    if out.resolve() in (edited.resolve(), model_dir.resolve()):
        raise ConfigError(f"--out {out}: must differ from the edited checkpoint and from --model")
    info = read_edit(edited)
    requests = recorded_requests(edited)
    if recompute:
        from mmadapt.editing.checkpoint import edit_checkpoint

        return edit_checkpoint(model_dir, requests, info.get("method", "rome"), info.get("hparams"), out,
                               overwrite=overwrite, allow_weak=allow_weak, min_gain=min_gain)
    check_output_dir(out, "edit", overwrite)
    try:
        deltas = load_file(str(edited / EDIT_DIR / DELTAS_FILE))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise DataError(f"{edited / EDIT_DIR / DELTAS_FILE}: unreadable: {e}") from None
    ckpt = open_checkpoint(model_dir)
    model, tok = load_llm(ckpt)
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        if name not in params:
            raise DataError(f"{model_dir}: has no parameter {name} (edited in {edited}); the models differ in "
                            "architecture: use --recompute to edit it afresh")
        if tuple(params[name].shape) != tuple(delta.shape):
            raise DataError(f"{model_dir}: {name} is {list(params[name].shape)}, the recorded delta "
                            f"{list(delta.shape)}; use --recompute")
    model_id, base_files = weights_id(ckpt.llm_dir)
    before, before_rows = evaluate(model, tok, requests)
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(delta.to(params[name].dtype))
    with output_directory(out, "edit", overwrite) as tmp:
        patched = write_edited(ckpt, model, deltas, tmp)
        after, per_request = evaluate(model, tok, requests)
        outcomes = edit_outcomes(before_rows, per_request, min_gain)
        if any(o["status"] != "ok" for o in outcomes) and not allow_weak:  # inside the output context: nothing written
            raise WeakEditError(describe_weak(requests, outcomes, info.get("layers", []), info.get("layer_choice")))
        record = edit_record(
            ckpt, model_dir, model_id, base_files, requests, patched, outcomes,
            method=info.get("method", "?"), hparams=info.get("hparams", {}), layers=info.get("layers", []),
            layer_choice=info.get("layer_choice"), metrics={"before": before, "after": after, "method": {}},
            per_request=per_request)
        record["reapplied_from"] = {"path": str(edited), "model_id": info["base"].get("model_id"), "mode": "deltas"}
        save_edit_record(tmp, record)
        write_manifest(tmp, kind="edit", config={"reapplied_from": str(edited), "method": record["method"],
                                                 "hparams": to_dict(record["hparams"]), "n_requests": len(requests)},
                       inputs=[model_dir, edited], final_path=out,
                       extra={"edit": {"layers": record["layers"], "delta_norms": record["delta_norms"], "metrics": after}})
    logger.info("re-applied %d edit(s) of %s to %s -> %s", len(requests), edited, model_dir, out)
    return record
