"""`mmadapt generate`: parse the command line, call `mmadapt.generate`, print."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError
from mmadapt.generate import PLACEHOLDERS, generate_batch, resolve_media


def run_cli(args: argparse.Namespace) -> int:
    from mmadapt.factory import load_model

    model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    media: dict[str, list[Any]] = {}
    prompt = args.prompt
    for modality, paths in (("image", args.image), ("audio", args.audio), ("video", args.video)):
        if not paths:
            continue
        if modality not in getattr(model, "modalities", model.encoders):
            raise DataError(f"--{modality} given but {args.model} has no {modality} encoder")
        for p in paths:  # resolve_media also refuses a name the OS cannot open (too long) as a DataError
            resolve_media(p, Path.cwd(), f"--{modality}", modality)
        media[modality] = paths
        missing = len(paths) - prompt.count(PLACEHOLDERS[modality])
        if missing > 0:  # the usual case: the user does not type placeholders
            prompt = "\n".join([PLACEHOLDERS[modality]] * missing + [prompt])
    print(generate_batch(model, [([{"role": "user", "content": prompt}], media)], max_new_tokens=args.max_new_tokens)[0])
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a prompt with a saved model (and an image / audio / video)")
    p.add_argument("prompt")
    p.add_argument("--model", required=True, help="an mmadapt checkpoint directory")
    p.add_argument("--image", action="append", help="image file (repeatable)")
    p.add_argument("--audio", action="append", help="audio file (repeatable)")
    p.add_argument("--video", action="append", help="video file (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (never enabled by the checkpoint itself)")
    p.set_defaults(func=run_cli)
