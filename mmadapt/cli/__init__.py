"""The `mmadapt` command: a thin dispatcher over mmadapt/cli/<command>.py (parse, call one library function, print).

Exit codes: 0 success; 2 bad input or config (the message names the place); 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mmadapt.errors import MMAdaptError

# Every subcommand is the module mmadapt/cli/<name>.py, whose add_cli(sub) adds its parser
# (parser.set_defaults(func=...)); imported lazily, only for the command chosen.
COMMANDS: dict[str, str] = {
    name: f"mmadapt.cli.{name}:add_cli"
    for name in ("train", "generate", "chat", "quickstart", "lineage", "export", "merge", "rag", "edit", "serve", "ui",
                 "eval")
}


# One line per command for `mmadapt --help`, which imports no command module (so it starts in well under a second).
SUMMARIES: dict[str, str] = {
    "train": "train from a YAML run config (SFT, DPO-family objectives, LoRA, stages)",
    "generate": "answer a prompt with a saved model (and an image / audio / video)",
    "chat": "talk to a saved model: multi-turn, system prompt, sampling, media by path",
    "quickstart": "train and evaluate a tiny model on generated data, offline",
    "lineage": "where a checkpoint came from (base -> SFT -> DPO -> merge -> edit), --verify re-hashes",
    "export": "a standalone model: LoRA merged, or --format hf for transformers / vLLM",
    "merge": "merge models or adapters (linear, task arithmetic, TIES, DARE, SLERP, per part)",
    "rag": "retrieval indices: build, add, update, delete, query, ask, eval, tune",
    "edit": "knowledge editing of saved checkpoints (ROME, MEMIT, FT-L), evaluation, exact revert",
    "serve": "an OpenAI-compatible server (chat completions, embeddings, RAG citations)",
    "eval": "one evaluation report over tasks and models (report.json / .md / .html)",
    "ui": "the web app: chat, train, evaluate, merge, edit, lineage",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmadapt", description="Post-training for LLMs: multimodal, DPO, RAG, editing, merging.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        if name != only:  # only the chosen command's module is imported (none for `mmadapt --help`)
            sub.add_parser(name, help=SUMMARIES.get(name, f"see `mmadapt {name} --help`"), add_help=False)
            continue
        module_name, attr = target.split(":")
        getattr(importlib.import_module(module_name), attr)(sub)
    return parser


NOISY_LOGGERS = ("PIL", "matplotlib", "urllib3", "filelock", "fsspec", "httpx", "httpcore", "asyncio", "h5py")


def quiet_libraries(verbose: bool) -> None:
    """Our -v shows mmadapt's debug lines, not every library's; warnings about the libraries' own future
    (FutureWarning / DeprecationWarning floods from transformers, torch) appear only with -v."""
    import warnings

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)


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
    quiet_libraries(args.verbose)
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
    except KeyError as e:  # a name from the user's input (a config key, a record field) that is not there
        logging.getLogger(__name__).debug("KeyError", exc_info=True)
        print(f"mmadapt {args.command}: error: {e.args[0]!r} not found (run with -v for where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmadapt {args.command}: interrupted", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
