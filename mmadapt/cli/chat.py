"""`mmadapt chat`: parse the command line, call `mmadapt.chat`, print."""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from mmadapt.chat import HELP, chat_loop


def run_cli(args: argparse.Namespace) -> int:
    from mmadapt.serve.engine import ChatEngine, EngineConfig, SamplingParams

    engine = ChatEngine.from_directory(args.model, index=args.index, trust_remote_code=args.trust_remote_code,
                                       config=EngineConfig(max_batch_size=1, batch_window_ms=0.0, batch_max_wait_ms=0.0))
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    params.check(engine.config.max_tokens_limit)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"mmadapt chat with {args.model} ({HELP})")

    def lines() -> Iterable[str]:
        conversation_media = [f"/image {p}" for p in args.image or []] + [f"/audio {p}" for p in args.audio or []]
        yield from conversation_media
        while True:
            try:
                line = input("you> ") if interactive else sys.stdin.readline()
            except EOFError:
                return
            if not interactive and not line:
                return
            yield line

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        chat_loop(engine, params, lines(), write, system=args.system)
    finally:
        engine.close()
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a saved model: multi-turn, system prompt, sampling, media by path")
    p.add_argument("model", help="an mmadapt checkpoint, a Hugging Face VLM or causal LM directory")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--image", action="append", help="an image for the first message (repeatable)")
    p.add_argument("--audio", action="append", help="an audio file for the first message (repeatable)")
    p.add_argument("--index", help="a RAG index: each message retrieves passages and the answer cites them")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (never enabled by the checkpoint itself)")
    p.set_defaults(func=run_cli)
