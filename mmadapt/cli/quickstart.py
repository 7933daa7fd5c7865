"""`mmadapt quickstart`: parse the command line, call `mmadapt.quickstart`, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmadapt import registry
from mmadapt.quickstart import MEDIA_TASKS, TASKS


def run_cli(args: argparse.Namespace) -> int:
    import os

    from mmadapt.errors import ConfigError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the quickstart never downloads
    if args.connector and args.task not in MEDIA_TASKS:
        raise ConfigError(f"--connector applies to the {', '.join(MEDIA_TASKS)} quickstarts, not {args.task!r}")
    out = Path(args.out or f"runs/quickstart-{args.task}")
    registry.resolve("quickstart", args.task, where="TASK")(out, connector=args.connector)
    print(f"\nmetrics: {out / 'metrics.json'}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train and evaluate a tiny model on generated data, offline")
    p.add_argument("task", nargs="?", default="vlm", choices=TASKS)
    p.add_argument("--out", help="output directory (default runs/quickstart-TASK)")
    p.add_argument("--connector", help=f"connector for the {', '.join(MEDIA_TASKS)} task "
                   f"(a registered name: {', '.join(registry.names('connector'))})")
    p.set_defaults(func=run_cli)
