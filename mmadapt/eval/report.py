"""Report writers: report.json (machine-readable), report.md, a self-contained report.html (charts inlined as
base64 PNG), a plain-text table for the terminal, and the lineage chain of every model."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path
from typing import Any

from mmadapt.config import to_dict
from mmadapt.eval.config import SuiteConfig, TaskConfig
from mmadapt.eval.tasks import LOWER_IS_BETTER
from mmadapt.io import atomic_write_json, atomic_write_text


def _lineage(path: str) -> dict[str, Any]:
    from mmadapt.lineage import format_chain, read_manifest

    manifest = read_manifest(path)
    if manifest is None:
        return {"chain": [], "text": f"{path}: no manifest.json (not written by mmadapt)"}
    chain, node = [], {**manifest, "path": str(path)}
    while node:  # the first parent at each step: base <- SFT <- DPO <- merge <- edit, read upwards
        chain.append({"kind": node.get("kind", "?"), "path": node.get("path", "?")})
        node = (node.get("parents") or [None])[0]
    return {"chain": chain[::-1], "text": format_chain({**manifest, "path": str(path)})}


def build_report(suite: SuiteConfig, tasks: list[TaskConfig], models: list[str], names: list[str],
                 model_hashes: dict[str, str], task_hashes: dict[str, str], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report as data: models (path, hash, lineage), and per task each model's metrics, intervals and
    change against the first model."""
    first = names[0]
    out_tasks = {}
    for task in tasks:
        per_model = results[task.name]
        reference = per_model[first]["metrics"]
        rows = {}
        for name in names:
            entry = dict(per_model[name])
            entry["delta"] = {k: v - reference[k] for k, v in entry["metrics"].items()
                              if k in reference and isinstance(v, (int, float))}
            rows[name] = entry
        out_tasks[task.name] = {"kind": task.kind, "hash": task_hashes[task.name], "config": to_dict(task),
                                "lower_is_better": sorted(m for m in reference if m in LOWER_IS_BETTER), "results": rows}
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference_model": first,
        "bootstrap": suite.bootstrap,
        "models": [{"name": n, "path": str(p), "hash": model_hashes[n], "lineage": _lineage(str(p))}
                   for n, p in zip(names, models)],
        "tasks": out_tasks,
    }


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _cell(entry: dict[str, Any], metric: str, first: bool) -> str:
    value = entry["metrics"][metric]
    text = _fmt(value)
    ci = entry["ci"].get(metric)
    if ci and not any(math.isnan(c) for c in ci):
        text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if not first and metric in entry["delta"]:
        text += f" ({entry['delta'][metric]:+.3g})"
    return text


def _table_rows(report: dict[str, Any], task: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [m["name"] for m in report["models"]]
    metrics = list(task["results"][names[0]]["metrics"])
    rows = [[name] + [_cell(task["results"][name], m, i == 0) for m in metrics] for i, name in enumerate(names)]
    return ["model"] + metrics, rows


def format_text(report: dict[str, Any]) -> str:
    """Plain text: one block per task (value [95% CI] (change vs the first model))."""
    lines = []
    for name, task in report["tasks"].items():
        header, rows = _table_rows(report, task)
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines.append(f"\n{name} ({task['kind']}, n={next(iter(task['results'].values()))['n']})")
        for row in [header] + rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    first = report["reference_model"]
    out = ["# Evaluation report", "", f"Created {report['created']}. Cells: value [95% bootstrap interval, "
           f"{report['bootstrap']} resamples] (change against `{first}`).", "", "## Models", ""]
    for m in report["models"]:
        chain = " -> ".join(f"{c['kind']} ({Path(c['path']).name})" for c in m["lineage"]["chain"]) or "no lineage"
        out.append(f"- **{m['name']}** `{m['path']}` (weights {m['hash'][:12]}): {chain}")
    for name, task in report["tasks"].items():
        header, rows = _table_rows(report, task)
        n = next(iter(task["results"].values()))["n"]
        lower = f"; lower is better: {', '.join(task['lower_is_better'])}" if task["lower_is_better"] else ""
        out += ["", f"## {name}", "", f"kind `{task['kind']}`, {n} items{lower}", "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def task_chart(report: dict[str, Any], task: dict[str, Any]) -> bytes:
    """PNG bytes: one panel per metric, one bar per model, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m["name"] for m in report["models"]]
    metrics = [k for k in task["results"][names[0]]["metrics"] if k not in ("n_requests", "tokens")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.4 * len(metrics) + 0.6, 2.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        values = [task["results"][n]["metrics"][metric] for n in names]
        lows, highs = [], []
        for n, v in zip(names, values):
            ci = task["results"][n]["ci"].get(metric) or [v, v]
            lows.append(max(v - ci[0], 0) if not math.isnan(ci[0]) else 0)
            highs.append(max(ci[1] - v, 0) if not math.isnan(ci[1]) else 0)
        ax.bar(range(len(names)), values, yerr=[lows, highs], capsize=3,
               color=[colours[i % len(colours)] for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
        ax.set_title(metric + (" (lower better)" if metric in task["lower_is_better"] else ""), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def format_html(report: dict[str, Any]) -> str:
    """One self-contained page: no external scripts, styles or images."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mmadapt evaluation report</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}td:first-child{text-align:left}"
             ".up{color:#080}.down{color:#b00}pre{background:#f6f6f6;padding:6px;font-size:12px;overflow-x:auto}"
             "</style></head><body>",
             f"<h1>Evaluation report</h1><p>{e(report['created'])}. Cells: value [95% bootstrap interval] "
             f"(change against <b>{e(report['reference_model'])}</b>).</p><h2>Models</h2>"]
    for m in report["models"]:
        parts.append(f"<h3>{e(m['name'])}</h3><p><code>{e(m['path'])}</code> weights {e(m['hash'][:16])}</p>"
                     f"<pre>{e(m['lineage']['text'])}</pre>")
    names = [m["name"] for m in report["models"]]
    for name, task in report["tasks"].items():
        metrics = list(task["results"][names[0]]["metrics"])
        n = task["results"][names[0]]["n"]
        parts.append(f"<h2>{e(name)}</h2><p>kind <code>{e(task['kind'])}</code>, {n} items</p><table><tr><th>model</th>"
                     + "".join(f"<th>{e(m)}</th>" for m in metrics) + "</tr>")
        for i, model in enumerate(names):
            entry = task["results"][model]
            cells = []
            for metric in metrics:
                delta = entry["delta"].get(metric, 0.0)
                better = delta < 0 if metric in task["lower_is_better"] else delta > 0
                css = "" if i == 0 or delta == 0 else (" class='up'" if better else " class='down'")
                cells.append(f"<td{css}>{e(_cell(entry, metric, i == 0))}</td>")
            parts.append(f"<tr><td>{e(model)}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
        png = base64.b64encode(task_chart(report, task)).decode()
        parts.append(f"<img alt='{e(name)} chart' src='data:image/png;base64,{png}'>")
        samples = [(model, x) for model in names for x in task["results"][model].get("examples", [])]
        if samples:  # a few predictions, to see what the numbers count
            parts.append("<details><summary>examples</summary><table><tr><th>model</th><th>prompt</th><th>prediction</th>"
                         "<th>reference</th></tr>" + "".join(
                             f"<tr><td>{e(m)}</td><td>{e(str(x['prompt']))}</td><td>{e(str(x['prediction']))}</td>"
                             f"<td>{e(str(x['reference']))}</td></tr>" for m, x in samples) + "</table></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict[str, Any], out: str | Path) -> None:
    """report.json, report.md, report.html and manifest.json (the models' lineage embedded), each atomic."""
    from mmadapt.lineage import write_manifest

    out = Path(out)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", format_markdown(report))
    atomic_write_text(out / "report.html", format_html(report))
    write_manifest(out, kind="eval_report", config={"tasks": {k: t["config"] for k, t in report["tasks"].items()}},
                   inputs=[m["path"] for m in report["models"]])
