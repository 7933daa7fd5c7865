"""`mmadapt merge`: parse the command line, call `mmadapt.merge.merge`, print."""

from __future__ import annotations

import argparse

from mmadapt.merge.merge import load_merge_config, run_merge


def _cli(args: argparse.Namespace) -> int:
    config = load_merge_config(args.config, args.set)
    summary = run_merge(config, args.out, overwrite=args.overwrite)
    print(f"merged {len(config.models)} model(s) with {config.method} into {args.out}")
    for key, value in summary.items():
        print(f"  {key:<20} {value:g}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge models, mmadapt checkpoints or LoRA adapters (linear, task arithmetic, "
                                     "TIES, DARE, SLERP), streamed tensor by tensor")
    p.add_argument("config", help="merge YAML: method, models, base_model, parameters, dtype (or a mergekit YAML)")
    p.add_argument("--out", required=True, help="output directory (written atomically, with manifest.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier merge output")
    p.set_defaults(func=_cli)
