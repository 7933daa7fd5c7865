"""`mmadapt eval`: one suite over N models -> cached per-(model, task) results -> report.json / .md / .html.

Results are cached in REPORT_DIR/cache/<model hash>/<task>-<task hash>.json as soon as each is done, so a
killed report, or one extended by a model or a task, re-runs only the missing pairs. The model hash comes
from the weights' SHA-256 (the manifest's, verified when the model loads); the task hash from the task's
config, its data files' bytes and METRICS_VERSION (bumped when a metric's definition changes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmadapt import registry
from mmadapt.config import to_dict
from mmadapt.errors import ConfigError, DataError
from mmadapt.eval import metrics as M
from mmadapt.eval.config import SuiteConfig, TaskConfig
from mmadapt.io import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

METRICS_VERSION = 1
CACHE_DIR = "cache"


def _data_files(task: TaskConfig) -> list[Path]:
    files = [Path(task.path)] if task.path else []
    if task.record:
        from mmadapt.editing.checkpoint import EDIT_DIR, EDIT_FILE

        files.append(Path(task.record) / EDIT_DIR / EDIT_FILE)
    if task.index:
        files += sorted(p for p in Path(task.index).rglob("*") if p.is_file())
    return files


def task_hash(task: TaskConfig) -> str:
    """SHA-256 of what decides a task's result: its config, its data's bytes and the metric definitions."""
    digest = hashlib.sha256(json.dumps({"task": to_dict(task), "metrics_version": METRICS_VERSION}, sort_keys=True).encode())
    for path in _data_files(task):
        if not path.is_file():
            raise DataError(f"task {task.name}: {path} does not exist")
        digest.update(sha256_file(path).encode())
    if task.reference:  # the reference model's weights decide the rewards
        from mmadapt.eval.scoring import model_hash

        digest.update(model_hash(task.reference).encode())
    return digest.hexdigest()


def load_items(task: TaskConfig) -> list[tuple[str, dict[str, Any]]]:
    """The task's items as (where, record): a JSONL file's records, and/or an edited checkpoint's requests."""
    from mmadapt.data.records import read_records

    items = read_records(task.path) if task.path else []
    if task.record:
        from mmadapt.editing.checkpoint import read_edit

        items = [(r.get("where") or f"{task.record}/edit/edit.json: requests[{n}]", r)
                 for n, r in enumerate(read_edit(task.record)["requests"])] + items
    if not items:
        raise DataError(f"task {task.name}: {task.path or task.record} holds no items")
    return items[:task.limit] if task.limit else items


def inherited_edit_tasks(models: list[str], tasks: list[TaskConfig]) -> list[TaskConfig]:
    """An `edits` task for every edited checkpoint in any model's lineage (still on disk, not already a task):
    so the report re-measures an edit on the models derived from it (merged, exported, fine-tuned again)."""
    from mmadapt.editing.checkpoint import EDIT_DIR, EDIT_FILE
    from mmadapt.lineage import read_manifest

    known = {str(Path(t.record).resolve()) for t in tasks if t.record}
    found: dict[str, TaskConfig] = {}

    def walk(node: dict[str, Any]) -> None:
        path = Path(node.get("path", ""))
        if node.get("kind") == "edit" and (path / EDIT_DIR / EDIT_FILE).is_file():
            key = str(path.resolve())
            if key not in known and key not in found:
                found[key] = TaskConfig(name=f"edits-{path.name}", kind="edits", record=str(path))
        for parent in node.get("parents", []):
            walk(parent)

    for model in models:
        manifest = read_manifest(model)
        if manifest:
            walk({**manifest, "path": str(model)})
    return list(found.values())


def _model_names(models: list[str]) -> list[str]:
    names = []
    for path in models:
        name = Path(path).name or str(path)
        names.append(name if name not in names else f"{name}#{len(names)}")
    return names


def _summarise(scored: Any, n_items: int, bootstrap: int, seed: int) -> dict[str, Any]:
    ci = {}
    for name, values in scored.samples.items():
        statistic = scored.corpus.get(name, M.mean)
        ci[name] = list(M.bootstrap_ci(values, statistic, n=bootstrap, seed=seed))
    return {"metrics": scored.metrics, "ci": ci, "n": n_items, "examples": scored.examples}


def score_pair(model: Any, task: TaskConfig, suite: SuiteConfig) -> dict[str, Any]:
    """One task on one loaded model: metrics, 95% intervals, item count, a few examples."""
    import torch

    items = load_items(task)
    root = Path(task.path).parent if task.path else Path(task.record or ".")
    torch.manual_seed(suite.seed)
    kind = registry.resolve("eval_task", task.kind, where=f"tasks.{task.name}.kind")
    scored = kind(model, task, items, root, suite.batch_size)
    return _summarise(scored, len(items), suite.bootstrap, suite.seed)


def evaluate_suite(suite: SuiteConfig, models: list[str], out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Score every (model, task) pair not cached yet, then write report.json, report.md and report.html."""
    from mmadapt.eval.report import build_report, write_report
    from mmadapt.eval.scoring import load_eval_model, model_hash

    if not models:
        raise ConfigError("no models: name them in the suite's `models` or with --model DIR")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / CACHE_DIR).is_dir() and not overwrite:
        raise ConfigError(f"--out {out}: exists and is not an eval report directory; choose another or pass --overwrite")
    tasks = list(suite.tasks) + (inherited_edit_tasks(models, suite.tasks) if suite.inherited_edits else [])
    hashes = {t.name: task_hash(t) for t in tasks}
    names = _model_names(models)
    results: dict[str, dict[str, Any]] = {t.name: {} for t in tasks}
    model_hashes = {}
    for name, path in zip(names, models):
        model_hashes[name] = model_hash(path)
        model = None
        for task in tqdm(tasks, desc=f"model {name}", leave=False):
            cache = out / CACHE_DIR / model_hashes[name][:16] / f"{task.name}-{hashes[task.name][:16]}.json"
            if cache.is_file() and not overwrite:
                results[task.name][name] = json.loads(cache.read_text())
                continue
            if model is None:  # loaded only when something is missing
                model = load_eval_model(path, trust_remote_code=suite.trust_remote_code)
            logger.info("scoring %s on %s", name, task.name)
            result = score_pair(model, task, suite)
            atomic_write_json(cache, result)
            results[task.name][name] = result
        del model
    report = build_report(suite, tasks, models, names, model_hashes, hashes, results)
    write_report(report, out)
    return report
