"""`mmadapt eval`: parse the command line, call `mmadapt.eval.run`, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmadapt.config import load
from mmadapt.eval.run import SuiteConfig, evaluate_suite


def run_cli(args: argparse.Namespace) -> int:
    from mmadapt.eval.report import format_text

    suite = load(SuiteConfig, args.suite, args.set)
    models = list(suite.models) + [m for m in (args.model or []) if m not in suite.models]
    report = evaluate_suite(suite, models, args.out, overwrite=args.overwrite)
    print(format_text(report))
    print(f"\nreport: {Path(args.out) / 'report.html'} (also report.md, report.json)")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models side by side on a task suite: report.json / .md / .html")
    p.add_argument("suite", help="suite YAML (tasks, optional models)")
    p.add_argument("--model", action="append", help="a model directory (repeatable; after the suite's models)")
    p.add_argument("--out", required=True, help="report directory (also the result cache: re-runs reuse it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite key")
    p.add_argument("--overwrite", action="store_true", help="ignore cached results (and allow a non-report --out)")
    p.set_defaults(func=run_cli)
