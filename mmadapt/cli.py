"""The `mmadapt` command: a thin dispatcher; each subcommand's parser lives beside the code it runs.

Exit codes: 0 success; 2 bad input or config (the message names the place); 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mmadapt.errors import MMAdaptError

# subcommand -> "module:function" that adds its parser (parser.set_defaults(func=...)), imported lazily.
COMMANDS: dict[str, str] = {
    "train": "mmadapt.train.run:add_cli",
    "generate": "mmadapt.generate:add_cli",
    "quickstart": "mmadapt.quickstart:add_cli",
    "lineage": "mmadapt.lineage_cli:add_cli",
    "export": "mmadapt.train.peft:add_cli",
    "merge": "mmadapt.merge.merge:add_cli",
    "rag": "mmadapt.rag.cli:add_cli",
    "edit": "mmadapt.editing.cli:add_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmadapt", description="Post-training for LLMs: multimodal, DPO, RAG, editing, merging.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"see `mmadapt {name} --help`", add_help=False)
            continue
        module_name, attr = target.split(":")
        getattr(importlib.import_module(module_name), attr)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the chosen subcommand's parser: importing every stack (faiss, torch, ...) just for --help is slow.
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except MMAdaptError as e:
        print(f"mmadapt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"mmadapt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmadapt {args.command}: interrupted", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
