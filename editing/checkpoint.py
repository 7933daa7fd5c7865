"""Edit a saved checkpoint and revert it bit-for-bit.

A checkpoint is a plain HF model directory or an mmadapt checkpoint (whose LLM, in DIR/llm, is
edited). The edited copy is written atomically; the weight files are copied and only the bytes of
the edited tensors are overwritten in place (same dtype, same offsets), so every other byte stays
the base's. DIR/edit/ holds `edit.json` (requests, layers, delta norms, metrics before/after, the
base's file hashes), `deltas.safetensors` (float32 deltas) and `original.safetensors` (the edited
tensors' original values, exact); `revert` writes those original bytes back and checks every
weight file's SHA-256 against the base's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmadapt.errors import ConfigError, DataError
from mmadapt.io import atomic_write_json, check_output_dir, contained_path, output_directory, read_json, sha256_file

logger = logging.getLogger(__name__)

EDIT_DIR = "edit"
EDIT_FILE = "edit.json"
DELTAS_FILE = "deltas.safetensors"
ORIGINAL_FILE = "original.safetensors"
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


@dataclass
class Checkpoint:
    root: Path  # the directory given
    llm_dir: Path  # where the HF model lives (root, or root/llm)
    kind: str  # "hf" | "mmadapt"

    def model_files(self) -> list[Path]:
        """The entries (relative to root) that make up the model and are copied into an edited checkpoint."""
        if self.kind == "mmadapt":
            from mmadapt.model import LLM_DIR, MODEL_CONFIG_FILE, MULTIMODAL_WEIGHTS

            return [Path(p) for p in (MODEL_CONFIG_FILE, LLM_DIR, MULTIMODAL_WEIGHTS) if (self.root / p).exists()]
        return sorted(p.relative_to(self.root) for p in self.root.iterdir()
                      if p.is_file() and p.name != "manifest.json" and not p.name.startswith("."))


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Recognise a checkpoint directory; errors say what was expected."""
    from mmadapt.factory import checkpoint_format
    from mmadapt.model import ADAPTER_DIR, LLM_DIR

    root = Path(directory)
    kind = checkpoint_format(root)
    if kind == "mmadapt":
        if (root / ADAPTER_DIR).is_dir():
            raise DataError(f"{root}: has LoRA adapters ({ADAPTER_DIR}/); merge them first: "
                            f"mmadapt export --model {root} --merge-adapters --out MERGED_DIR")
        ckpt = Checkpoint(root, root / LLM_DIR, "mmadapt")
    else:  # an HF model, or an HF vision-language model mmadapt saved in its family's own layout
        ckpt = Checkpoint(root, root, "hf")
    if (ckpt.llm_dir / "adapter_config.json").is_file():
        raise DataError(f"{ckpt.llm_dir}: is a peft adapter, not a full model; merge it into its base first")
    if not list(ckpt.llm_dir.glob("*.safetensors")):
        raise DataError(f"{ckpt.llm_dir}: no .safetensors weights (mmadapt edits safetensors checkpoints; "
                        "re-save the model with save_pretrained(..., safe_serialization=True))")
    return ckpt


def load_llm(ckpt: Checkpoint) -> tuple[Any, Any]:
    """(model in float32, eval mode; tokenizer) of a checkpoint's LLM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from mmadapt.merge.lazy import check_index

    check_index(ckpt.llm_dir)  # shard names stay inside the checkpoint
    try:  # an edited checkpoint is data: its config.json's auto_map never runs (no trust_remote_code)
        # an HF vision-language model's language model is edited inside the whole model (text-only forward)
        from mmadapt.factory import is_hf_vlm_dir

        auto = AutoModelForImageTextToText if is_hf_vlm_dir(ckpt.llm_dir) else AutoModelForCausalLM
        model = auto.from_pretrained(ckpt.llm_dir, dtype=torch.float32, trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(ckpt.llm_dir, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{ckpt.llm_dir}: cannot load the model or its tokenizer: {e}") from e
    return model.eval(), tok


def saved_keys(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """{parameter name: the key transformers saves it under} (VLM classes rename keys on save, e.g. llava's
    model.language_model.* is stored as language_model.model.*)."""
    from transformers.core_model_loading import revert_weight_conversion

    keys = {}
    for name in names:
        reverted = revert_weight_conversion(model, {name: model.get_parameter(name).detach()})
        keys[name] = next(iter(reverted)) if len(reverted) == 1 else name
    return keys


def weights_id(llm_dir: Path) -> tuple[str, dict[str, str]]:
    """(one SHA-256 over all weight files, {file: SHA-256}) of a model directory: the stats cache's model key."""
    files = {p.name: sha256_file(p) for p in sorted(llm_dir.glob("*.safetensors"))}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), files


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the data section, header) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return 8 + size, header


def locate(llm_dir: Path, names: list[str], aliases: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """{param name: (weight file name, tensor key)}; keys may lack the model's prefix (old GPT-2 files say "h.0...")
    or be stored under the name transformers saves them as (`aliases`)."""
    keys: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(llm_dir.glob("*.safetensors")):
        for key in read_header(path)[1]:
            if key != "__metadata__":
                keys.setdefault(key, []).append((path.name, key))
    found = {}
    for name in names:
        matches = (keys.get(name) or keys.get((aliases or {}).get(name, name))
                   or [m for key, ms in keys.items() if name.endswith("." + key) for m in ms])
        if len(matches) != 1:
            raise DataError(f"{llm_dir}: parameter {name} is in {len(matches)} weight entries (need exactly one) "
                            f"of {', '.join(p.name for p in llm_dir.glob('*.safetensors'))}")
        found[name] = matches[0]
    return found


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def patch_tensor(path: Path, key: str, tensor: torch.Tensor) -> None:
    """Overwrite one tensor's bytes in a safetensors file (same dtype and shape, so nothing else moves)."""
    start, header = read_header(path)
    entry = header[key]
    if list(tensor.shape) != entry["shape"] or _DTYPES.get(entry["dtype"]) != tensor.dtype:
        raise DataError(f"{path}: {key} is {entry['dtype']} {entry['shape']}, cannot write {tensor.dtype} {list(tensor.shape)}")
    data = _tensor_bytes(tensor)
    begin, end = entry["data_offsets"]
    if end - begin != len(data):
        raise DataError(f"{path}: {key} occupies {end - begin} bytes, the new tensor {len(data)}")
    with open(path, "r+b") as f:
        f.seek(start + begin)
        f.write(data)


def _copy_model(ckpt: Checkpoint, tmp: Path) -> None:
    for rel in ckpt.model_files():
        source, target = ckpt.root / rel, tmp / rel
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("manifest.json", ".*"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def write_edited(ckpt: Checkpoint, model: torch.nn.Module, deltas: dict[str, torch.Tensor], tmp: Path) -> dict[str, Any]:
    """Copy the checkpoint into `tmp`, write base + delta into the copied weight files, and set the in-memory
    parameters to exactly what was written (so evaluation measures the saved model). Returns the patch record."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    _copy_model(ckpt, tmp)
    llm_rel = ckpt.llm_dir.relative_to(ckpt.root)
    where = locate(ckpt.llm_dir, sorted(deltas), aliases=saved_keys(model, sorted(deltas)))
    originals, record = {}, {}
    for name, (file, key) in where.items():
        with safe_open(str(ckpt.llm_dir / file), "pt") as f:
            original = f.get_tensor(key)
        param = model.get_parameter(name)
        base_value = param.detach().float().cpu() - deltas[name].float()  # what the loader gave before the edit
        if tuple(original.shape) != tuple(param.shape) or not torch.allclose(
                base_value, original.float(), rtol=1e-5, atol=1e-5 * float(original.float().abs().max()) + 1e-7):
            raise DataError(f"{ckpt.llm_dir / file}: {key} is not stored as the loaded parameter {name} (the loader "
                            "converts it on load), so the file cannot be patched exactly")
        edited = (original.float() + deltas[name].float()).to(original.dtype)
        patch_tensor(tmp / llm_rel / file, key, edited)
        with torch.no_grad():
            param.copy_(edited.to(param.dtype))
        originals[name] = original.contiguous()
        record[name] = {"file": str(llm_rel / file), "key": key, "dtype": str(original.dtype).replace("torch.", ""),
                        "shape": list(original.shape), "delta_norm": float(deltas[name].norm())}
    (tmp / EDIT_DIR).mkdir()
    save_file({k: v.float().contiguous() for k, v in deltas.items()}, str(tmp / EDIT_DIR / DELTAS_FILE), metadata={"format": "pt"})
    save_file(originals, str(tmp / EDIT_DIR / ORIGINAL_FILE), metadata={"format": "pt"})
    return record


def read_edit(directory: str | Path) -> dict[str, Any]:
    """The edit record, checked: its fields have the right types and every path it names stays inside `directory`."""
    directory = Path(directory)
    path = directory / EDIT_DIR / EDIT_FILE
    if not path.is_file():
        raise DataError(f"{directory}: not an edited checkpoint (no {EDIT_DIR}/{EDIT_FILE})")
    info = read_json(path, "an edit record", DataError, expect=dict)
    for key, kind in (("llm_dir", str), ("checkpoint_kind", str), ("patched", dict), ("base", dict), ("requests", list)):
        if not isinstance(info.get(key), kind):
            raise DataError(f"{path}: field {key!r} must be a {kind.__name__}")
    if info["checkpoint_kind"] not in ("hf", "mmadapt"):
        raise DataError(f"{path}: checkpoint_kind {info['checkpoint_kind']!r} is not valid; valid: hf, mmadapt")
    contained_path(directory, info["llm_dir"] or ".", f"{path}: llm_dir", DataError)
    for name, entry in info["patched"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("key"), str)):
            raise DataError(f"{path}: patched[{name!r}] needs string 'file' and 'key'")
        contained_path(directory, entry["file"], f"{path}: patched[{name!r}].file", DataError)
        if not entry["file"].endswith(".safetensors"):
            raise DataError(f"{path}: patched[{name!r}].file {entry['file']!r} is not a .safetensors file")
    files = info["base"].get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise DataError(f"{path}: base.files must map weight file names to SHA-256 strings")
    for file in files:
        contained_path(directory / info["llm_dir"], file, f"{path}: base.files", DataError)
    return info


def revert(edited: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the base model back from an edited checkpoint; every weight file's SHA-256 must match the base's.

    Every path the record names is checked to stay inside `edited` before anything is read or written."""
    from safetensors.torch import load_file

    from mmadapt.lineage import write_manifest

    edited, out = Path(edited), Path(out)
    if out.resolve() == edited.resolve():
        raise ConfigError(f"--out {out}: must differ from the edited directory")
    info = read_edit(edited)
    check_output_dir(out, "edit_revert", overwrite)
    ckpt = Checkpoint(edited, edited / info["llm_dir"], info["checkpoint_kind"])
    try:
        originals = load_file(str(edited / EDIT_DIR / ORIGINAL_FILE))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise DataError(f"{edited / EDIT_DIR / ORIGINAL_FILE}: unreadable: {e}") from None
    missing = sorted(set(info["patched"]) - set(originals))
    if missing:
        raise DataError(f"{edited / EDIT_DIR / ORIGINAL_FILE}: no original values for {missing[:5]}")
    with output_directory(out, "edit_revert", overwrite) as tmp:
        _copy_model(ckpt, tmp)
        for name, entry in info["patched"].items():
            target = contained_path(tmp, entry["file"], f"{EDIT_DIR}/{EDIT_FILE}: patched[{name!r}].file", DataError)
            if not target.is_file():
                raise DataError(f"{edited}: the edit record names {entry['file']}, which the checkpoint does not hold")
            if entry["key"] not in read_header(target)[1]:
                raise DataError(f"{edited / entry['file']}: no tensor {entry['key']!r} (named by the edit record)")
            patch_tensor(target, entry["key"], originals[name])
        llm_rel = Path(info["llm_dir"])
        for file, digest in info["base"]["files"].items():
            if sha256_file(tmp / llm_rel / file) != digest:
                raise DataError(f"{edited}: reverting {file} does not reproduce the base's SHA-256 "
                                "(the edited checkpoint was modified after the edit)")
        write_manifest(tmp, kind="edit_revert", config={"reverted": str(edited)}, inputs=[edited], final_path=out,
                       extra={"restored_base": info["base"]})
    logger.info("reverted %s -> %s (weights identical to %s)", edited, out, info["base"]["path"])
    return out


def save_edit_record(tmp: Path, record: dict[str, Any]) -> None:
    atomic_write_json(tmp / EDIT_DIR / EDIT_FILE, record)


def edit_record(ckpt: Checkpoint, model_dir: str | Path, model_id: str, base_files: dict[str, str], requests: list,
                patched: dict[str, Any], outcomes: list[dict[str, Any]], *, method: str, hparams: dict[str, Any],
                layers: list[int], layer_choice: dict[str, Any] | None, metrics: dict[str, Any],
                per_request: Any) -> dict[str, Any]:
    """The edit.json of an edited checkpoint (also of a re-applied edit): what changed, how it went, what to revert."""
    return {
        "status": "ok" if all(o["status"] == "ok" for o in outcomes) else "weak",  # weak: written only with allow_weak
        "outcomes": outcomes,
        "layer_choice": layer_choice or {"source": "hparams"},
        "method": method,
        "hparams": hparams,
        "layers": layers,
        "requests": [r.to_dict() | {"where": r.where} for r in requests],
        "delta_norms": {name: entry["delta_norm"] for name, entry in patched.items()},
        "metrics": metrics,
        "per_request": per_request,
        "patched": patched,
        "checkpoint_kind": ckpt.kind,
        "llm_dir": str(ckpt.llm_dir.relative_to(ckpt.root)),
        "base": {"path": str(model_dir), "model_id": model_id, "files": base_files},
    }


def edit_checkpoint(model_dir: str | Path, requests: list, method: str, hparams: dict[str, Any] | None, out: str | Path,
                    stats_dir: str | Path | None = None, overwrite: bool = False, allow_weak: bool = False,
                    min_gain: float = 0.5) -> dict[str, Any]:
    """Load `model_dir`, apply `requests` with `method` (rome | memit | ft), write the edited checkpoint to `out`.

    Missing old answers are taken from the base model first; metrics are measured before and after
    (after: on exactly the weights written). Returns the edit record (also in OUT/edit/edit.json).
    An edit that does not raise its target's mean log-probability by `min_gain` nats, or leaves the
    old answer ahead, raises `WeakEditError` and nothing is written, unless `allow_weak` (the record
    then says `status: weak` and, in `outcomes`, which edits did not take).
    """
    from mmadapt import registry
    from mmadapt.config import from_dict, to_dict
    from mmadapt.editing.evaluate import WeakEditError, describe_weak, edit_outcomes, evaluate, fill_missing_targets
    from mmadapt.editing.stats import StatsCache
    from mmadapt.lineage import write_manifest

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out {out}: must differ from --model (the base stays untouched)")
    check_output_dir(out, "edit", overwrite)  # before the (long) edit, not after
    apply = registry.resolve("edit_method", method, where="--method")
    hp = from_dict(apply.hparams_class, hparams or {}, path="hparams")
    ckpt = open_checkpoint(model_dir)
    model, tok = load_llm(ckpt)
    model_id, base_files = weights_id(ckpt.llm_dir)
    requests = fill_missing_targets(model, tok, requests)
    before, before_rows = evaluate(model, tok, requests)
    stats_root = stats_dir or getattr(getattr(hp, "stats", None), "cache_dir", None)
    result = apply(model, tok, requests, hp, cache=StatsCache(stats_root), model_id=model_id)
    with output_directory(out, "edit", overwrite) as tmp:
        patched = write_edited(ckpt, model, result.deltas, tmp)
        after, per_request = evaluate(model, tok, requests)
        outcomes = edit_outcomes(before_rows, per_request, min_gain)
        # raised inside the output context: nothing is written
        if any(o["status"] != "ok" for o in outcomes) and not allow_weak:
            raise WeakEditError(describe_weak(requests, outcomes, result.details.get("layers", []),
                                              result.details.get("layer_choice")))
        record = edit_record(
            ckpt, model_dir, model_id, base_files, requests, patched, outcomes,
            method=method, hparams=to_dict(hp), layers=result.details.get("layers", []),
            layer_choice=result.details.get("layer_choice"),
            metrics={"before": before, "after": after, "method": result.metrics}, per_request=per_request)
        save_edit_record(tmp, record)
        write_manifest(tmp, kind="edit", config={"method": method, "hparams": to_dict(hp), "n_requests": len(requests)},
                       inputs=[model_dir], final_path=out,
                       extra={"edit": {"layers": record["layers"], "delta_norms": record["delta_norms"], "metrics": after}})
    logger.info("edited %s -> %s with %s (%d requests)", model_dir, out, method, len(requests))
    return record
