"""`mmadapt chat MODEL`: a multi-turn conversation in the terminal with a saved model, loaded once.

It talks to the same ChatEngine the server runs (one copy of prompt building, sampling, retrieval), with
the conversation kept here. Lines starting with `/` are commands: `/image PATH` and `/audio PATH` attach
a file to the next message, `/system TEXT` sets the system prompt, `/reset` starts over, `/quit` ends.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from mmadapt.errors import DataError, MMAdaptError

HELP = "commands: /image PATH, /audio PATH, /system TEXT, /reset, /quit"


def media_part(kind: str, path: str) -> dict[str, Any]:
    """An OpenAI content part for a file on disk (the engine decodes it as it does a request's)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"/{kind}: file not found: {file}")
    data = base64.b64encode(file.read_bytes()).decode()
    if kind == "image":
        mime = mimetypes.guess_type(file.name)[0] or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    return {"type": "input_audio", "input_audio": {"data": data, "format": file.suffix.lstrip(".") or "wav"}}


class Conversation:
    """The turns so far, the system prompt and the media waiting for the next user message."""

    def __init__(self, system: str | None = None) -> None:
        self.system = system
        self.turns: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def messages(self, text: str) -> list[dict[str, Any]]:
        content: Any = [*self.pending, {"type": "text", "text": text}] if self.pending else text
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns + [{"role": "user", "content": content}]

    def commit(self, messages: list[dict[str, Any]], answer: str) -> None:
        self.turns = [m for m in messages if m["role"] != "system"] + [{"role": "assistant", "content": answer}]
        self.pending = []


def chat_loop(engine: Any, params: Any, lines: Iterable[str], write: Callable[[str], None],
              system: str | None = None) -> Conversation:
    """Answer each line of `lines` (streamed through `write`); a bad line is reported and the chat goes on."""
    conversation = Conversation(system)
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                conversation = Conversation(conversation.system)
                write("(conversation reset)\n")
            elif command == "/system":
                conversation.system = rest.strip() or None
                write("(system prompt set)\n")
            elif command in ("/image", "/audio"):
                conversation.pending.append(media_part(command[1:], rest.strip()))
                write(f"({command[1:]} attached to your next message)\n")
            elif command.startswith("/"):
                write(f"unknown command {command}; {HELP}\n")
            else:
                messages = conversation.messages(line)
                answer = ""
                for piece in engine.stream(messages, params):
                    if isinstance(piece, str):
                        answer += piece
                        write(piece)
                write("\n")
                conversation.commit(messages, answer)
        except MMAdaptError as e:
            conversation.pending = []
            write(f"error: {e}\n")
    return conversation


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
