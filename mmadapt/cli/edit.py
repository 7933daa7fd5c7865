"""`mmadapt edit apply|revert|eval|trace`: thin entry points over `mmadapt.editing`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mmadapt.errors import ConfigError, DataError


def _edit_config(args: argparse.Namespace) -> None:
    """Fill args.method / args.edits / args.hparams_data from an edit YAML; flags given on the command line win."""
    from mmadapt.config import read_yaml
    from mmadapt.editing.config import EditConfig, read_edit_config

    config = read_edit_config(args.config) if args.config else EditConfig()
    args.method = args.method or config.method
    if not args.edits:
        if config.requests is None:
            raise ConfigError("edit apply: no requests; give --edits FILE or `requests: FILE` in the edit YAML")
        args.edits = str(config.requests)
    args.hparams_data = {**config.hparams, **(read_yaml(args.hparams) if args.hparams else {})}


def _hparams(args: argparse.Namespace) -> dict:
    from mmadapt.config import apply_overrides

    data = dict(args.hparams_data)
    data = apply_overrides(data, args.set)
    if args.corpus:
        data.setdefault("stats", {})["corpus"] = args.corpus
    from mmadapt import registry

    method = registry.resolve("edit_method", args.method, where="--method")
    if "stats" not in {f.name for f in dataclasses.fields(method.hparams_class)}:
        data.pop("stats", None)  # a method without second-moment statistics (FT-L): --corpus out of habit is harmless
    return data


def apply_cli(args: argparse.Namespace) -> int:
    from mmadapt.editing.checkpoint import edit_checkpoint
    from mmadapt.editing.evaluate import format_table
    from mmadapt.editing.requests import read_requests

    from mmadapt.editing.evaluate import WeakEditError

    _edit_config(args)
    requests = read_requests(args.edits)
    try:
        record = edit_checkpoint(args.model, requests, args.method, _hparams(args), args.out, stats_dir=args.stats_dir,
                                 overwrite=args.overwrite, allow_weak=args.allow_weak)
    except WeakEditError as e:
        print(f"mmadapt edit apply: {e}\nnothing written to {args.out}", file=sys.stderr)
        return 1
    after = dict(record["metrics"]["after"], seconds_per_edit=record["metrics"]["method"]["seconds_per_edit"])
    print(format_table({"base": record["metrics"]["before"], args.method: after}))
    if record["status"] != "ok":
        print(f"\nWARNING: {sum(o['status'] != 'ok' for o in record['outcomes'])} edit(s) did not take "
              "(kept by --allow-weak; see 'outcomes' in edit/edit.json)")
    print(f"\nedited checkpoint: {args.out} (layers {record['layers']}; revert with `mmadapt edit revert {args.out} --out DIR`)")
    return 0


def revert_cli(args: argparse.Namespace) -> int:
    from mmadapt.editing.checkpoint import revert

    out = revert(args.edited, args.out, overwrite=args.overwrite)
    print(f"reverted {args.edited} -> {out}: weight files identical (SHA-256) to the base")
    return 0


def reapply_cli(args: argparse.Namespace) -> int:
    from mmadapt.editing.evaluate import format_table
    from mmadapt.editing.reapply import reapply

    record = reapply(args.edited, args.model, args.out, overwrite=args.overwrite, recompute=args.recompute,
                     allow_weak=args.allow_weak)
    print(format_table({f"{args.model} (before)": record["metrics"]["before"],
                        "re-applied edits": record["metrics"]["after"]}, columns=("efficacy", "paraphrase", "neighborhood", "fluency")))
    print(f"\nedited checkpoint: {args.out} (revert with `mmadapt edit revert {args.out} --out DIR`)")
    return 0


def _eval_requests(model_dir: Path, edits: str | None) -> list:
    """Requests from --edits, or those recorded in an edited checkpoint; missing old answers come from the
    recorded (base-filled) requests of an edited checkpoint, or from the model itself when it is not edited."""
    from mmadapt.editing.checkpoint import EDIT_DIR, EDIT_FILE, read_edit
    from mmadapt.editing.requests import parse_request, read_requests

    edited = (model_dir / EDIT_DIR / EDIT_FILE).is_file()
    recorded = []
    if edited:
        recorded = [parse_request({k: v for k, v in r.items() if k != "where"}, r.get("where", f"{model_dir}/edit"))
                    for r in read_edit(model_dir)["requests"]]
    if edits is None:
        if not edited:
            raise ConfigError(f"--edits: required, {model_dir} is not an edited checkpoint with recorded requests")
        return recorded
    requests = read_requests(edits)
    if not edited:
        return requests  # filled from this (unedited) model by the caller
    known = {(r.subject, r.prompt, r.target_new): r for r in recorded}
    out = []
    for request in requests:
        match = known.get((request.subject, request.prompt, request.target_new))
        if request.target_true is None and match is None:
            raise DataError(f"{request.where}: no target_true, and {model_dir} recorded no such edit to take it from")
        true = request.target_true or match.target_true
        neighborhood = [(p, t if t is not None else true) for p, t in request.neighborhood]
        out.append(dataclasses.replace(request, target_true=true, neighborhood=neighborhood))
    return out


def eval_cli(args: argparse.Namespace) -> int:
    from mmadapt.editing.checkpoint import load_llm, open_checkpoint
    from mmadapt.editing.evaluate import evaluate, fill_missing_targets, format_table
    from mmadapt.io import atomic_write_json

    model_dir = Path(args.model)
    ckpt = open_checkpoint(model_dir)
    requests = _eval_requests(model_dir, args.edits)
    model, tok = load_llm(ckpt)
    requests = fill_missing_targets(model, tok, requests)
    metrics, _ = evaluate(model, tok, requests)
    print(format_table({str(model_dir): metrics}, columns=("efficacy", "paraphrase", "neighborhood", "fluency")))
    if args.out:
        atomic_write_json(args.out, metrics)
    return 0


def trace_cli(args: argparse.Namespace) -> int:
    from mmadapt.editing.checkpoint import load_llm, open_checkpoint
    from mmadapt.editing.requests import parse_request
    from mmadapt.editing.trace import plot_trace, trace_fact
    from mmadapt.io import atomic_write_json

    request = parse_request({"prompt": args.prompt, "subject": args.subject, "target_new": args.target or "?"}, "--prompt")
    model, tok = load_llm(open_checkpoint(args.model))
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    result = trace_fact(model, tok, request.prompt, request.subject, args.target, samples=args.samples,
                        noise=args.noise, kinds=kinds, window=args.window, seed=args.seed)
    out = Path(args.out)
    plot_trace(result, out)
    atomic_write_json(out.with_suffix(".json"), result.summary())
    print(f"answer {result.answer!r}: P clean {result.clean:.3f}, subject corrupted {result.corrupted:.3f}")
    if "mlp" in result.scores:
        print(f"MLP layers carrying the fact (at the subject's last token): {result.top_layers('mlp') or 'none'}")
    for kind in result.scores:  # the numbers behind each heat map: its brightest cell and the subject-last row
        peak = result.peak(kind)
        print(f"{kind}: brightest cell P={peak['p']:.3f} at token {peak['token']} {peak['token_text']!r}, layer "
              f"{peak['layer']}; at the subject's last token, layers bringing the answer back: "
              f"{result.top_layers(kind) or 'none'}")
    print(f"heat map: {out} (scores: {out.with_suffix('.json')})")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    from mmadapt.registry import names

    p = sub.add_parser("edit", help="knowledge editing: apply (ROME/MEMIT/FT-L), revert, eval, trace")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("apply", help="edit a saved checkpoint into a new directory (with edit manifest and deltas)")
    a.add_argument("config", nargs="?", help="edit YAML: method (a registered edit method), hparams (its "
                   "hyper-parameters), requests (a JSONL file, relative to the YAML); flags below override it")
    a.add_argument("--model", required=True, help="a HF model directory or an mmadapt checkpoint")
    a.add_argument("--edits", help="edits.jsonl: one request per line (see examples/edits.jsonl); default: the YAML's requests")
    a.add_argument("--method", choices=names("edit_method"), help="default: the YAML's method, else rome")
    a.add_argument("--out", required=True, help="the edited checkpoint (written atomically)")
    a.add_argument("--hparams", help="YAML of the method's hyper-parameters (e.g. layer, v_steps, stats: {...})")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one hyper-parameter")
    a.add_argument("--corpus", help="text corpus for the second-moment statistics (.txt lines or .jsonl 'text')")
    a.add_argument("--stats-dir", help="statistics cache directory (default ~/.cache/mmadapt/edit_stats)")
    a.add_argument("--allow-weak", action="store_true",
                   help="write the checkpoint even when an edit did not take (its record says status: weak); "
                        "by default such a run writes nothing and exits 1")
    a.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier `edit apply` output")
    a.set_defaults(func=apply_cli)

    r = actions.add_parser("revert", help="restore the base weights of an edited checkpoint, bit for bit")
    r.add_argument("edited", help="a directory written by `mmadapt edit apply`")
    r.add_argument("--out", required=True)
    r.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier `edit revert` output")
    r.set_defaults(func=revert_cli)

    ra = actions.add_parser("reapply", help="apply the edits recorded in an edited checkpoint to another (derived) model")
    ra.add_argument("edited", help="a directory written by `mmadapt edit apply`")
    ra.add_argument("--model", required=True, help="the new model (HF directory or mmadapt checkpoint)")
    ra.add_argument("--out", required=True, help="the new edited checkpoint (its own record; `edit revert` restores --model)")
    ra.add_argument("--recompute", action="store_true", help="re-run the recorded method on --model instead of adding the recorded deltas")
    ra.add_argument("--allow-weak", action="store_true", help="write it even if some edits do not take")
    ra.add_argument("--overwrite", action="store_true")
    ra.set_defaults(func=reapply_cli)

    e = actions.add_parser("eval", help="efficacy, paraphrase, neighbourhood and fluency of a model on edit requests")
    e.add_argument("--model", required=True)
    e.add_argument("--edits", help="requests (default: those recorded in an edited checkpoint)")
    e.add_argument("--out", help="write the metrics here as JSON")
    e.set_defaults(func=eval_cli)

    t = actions.add_parser("trace", help="causal tracing of one fact: heat map PNG and the MLP layers that carry it")
    t.add_argument("--model", required=True)
    t.add_argument("--prompt", required=True, help="a template with {} for the subject, e.g. '{} is located in'")
    t.add_argument("--subject", required=True)
    t.add_argument("--target", help="the answer to trace (default: the model's own next token)")
    t.add_argument("--out", default="trace.png")
    t.add_argument("--samples", type=int, default=10)
    t.add_argument("--noise", type=float, help="noise std (default 3 x the embeddings' std)")
    t.add_argument("--window", type=int, default=1, help="restore this many consecutive layers at once")
    t.add_argument("--kinds", default="hidden,mlp,attn")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=trace_cli)
