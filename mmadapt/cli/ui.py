"""`mmadapt ui`: parse the command line, call `mmadapt.ui.app`, print."""

from __future__ import annotations

import argparse

from mmadapt.ui.app import create_app


def run(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(create_app(args.workdir), host=args.host, port=args.port, log_level="warning")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="web app: chat, train, evaluate, merge, edit, lineage")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--workdir", default=".", help="where runs start (relative YAML paths resolve here)")
    p.set_defaults(func=run)
