"""`mmadapt chat MODEL`: a multi-turn conversation in the terminal with a saved model, loaded once.

It talks to the same ChatEngine the server runs (one copy of prompt building, sampling, retrieval), with
the conversation kept here. Lines starting with `/` are commands: `/image PATH` and `/audio PATH` attach
a file to the next message, `/system TEXT` sets the system prompt, `/reset` starts over, `/quit` ends.
"""

from __future__ import annotations

import base64
import mimetypes
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
