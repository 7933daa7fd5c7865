"""Chat templates and the supervised-span mask: loss only on assistant turns, located by character offsets.

Rendering each prefix of the conversation through the template finds where every assistant turn
starts and ends in the rendered text; the tokenizer's offset mapping then marks exactly the
tokens inside those spans. No token-count arithmetic, so a template or tokenizer change can never
silently shift the labels (LLaVA's 'tokenization mismatch').
"""

from __future__ import annotations

import logging
from typing import Any

from mmadapt.data.chat_templates import CHATML_TEMPLATE, missing_markers, resolve_chat_template
from mmadapt.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "tool": "tool"}  # tool: a tool's result (ShareGPT's observation, OpenAI's tool role)


def ensure_chat_template(tokenizer: Any, template: str | None = None) -> None:
    """Use `template` if given, keep the tokenizer's own otherwise, and fall back to ChatML."""
    if template is not None:
        source = chat_template_source(tokenizer, template)
        check_jinja(source, "data.chat_template")
        tokenizer.chat_template = source
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


def check_jinja(source: str, key: str) -> None:
    """Refuse a chat template that is not valid Jinja now, naming its line, not at the first sample."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template  # transformers' own environment

    try:
        _compile_jinja_template(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{key}: the chat template is not valid Jinja: line {e.lineno}: {e.message}") from None


def parse_turn(turn: Any, where: str, key: str) -> dict[str, str]:
    """One `{from, value}` (or `{role, content}`) turn -> a chat message; `key` names the turn in errors."""
    if not isinstance(turn, dict):
        raise DataError(f"{where}: {key} is not an object")
    role = turn.get("from", turn.get("role"))
    content = turn.get("value", turn.get("content"))
    if not isinstance(role, str) or role not in ROLE_MAP:  # a list/dict role is unhashable: name it
        raise DataError(f"{where}: {key} has role {role!r}; valid: human, gpt (or user, assistant, system, tool)")
    if not isinstance(content, str):
        raise DataError(f"{where}: {key} has no text 'value'")
    return {"role": ROLE_MAP[role], "content": content}


def to_messages(turns: list[dict[str, Any]], where: str) -> list[dict[str, str]]:
    """LLaVA `{from, value}` turns (or `{role, content}`) -> chat-template messages."""
    messages = [parse_turn(turn, where, f"conversations[{i}]") for i, turn in enumerate(turns)]
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant ('gpt') turn to learn from")
    first = next(i for i, m in enumerate(messages) if m["role"] != "system")
    if messages[first]["role"] == "assistant":  # chat templates alternate user/assistant; many raise or mis-render
        raise DataError(f"{where}: conversations[{first}] is an assistant ('gpt') turn before any user turn; "
                        "valid: optional system turns, then a human/user turn first")
    return messages


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of every assistant reply.

    A reply's span runs from the end of the rendered prompt (prefix + generation prompt) to the end
    of the rendered prefix including the reply, so it holds the reply text and the template's
    end-of-turn marker (the model must learn to stop), never the role header.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not text.startswith(upto) or not upto.startswith(prompt):
            # The template rewrites history (Qwen3 drops <think>, Phi-3 ends with eos): find replies turn by turn.
            return text, turn_by_turn_spans(tokenizer, messages, text)
        end = len(upto.rstrip("\n")) if upto.endswith("\n") else len(upto)
        spans.append((len(prompt), end))
    return text, spans


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is supervised (assistant)."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    supervised = [
        any(start <= s and e <= end and e > s for start, end in spans) for s, e in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), supervised


def chat_template_source(tokenizer: Any, value: str) -> str:
    """`data.chat_template` (a name, tokenizer directory, .jinja file or Jinja) as Jinja source; a named template whose
    markers are not tokens of this tokenizer is a warning (they are split into pieces: add them as special tokens)."""
    source = resolve_chat_template(value)
    missing = missing_markers(tokenizer, value)
    if missing:
        logger.warning("data.chat_template %r: %s not single tokens of this tokenizer; they will be split into pieces "
                       "(add them as special tokens, or use the template the tokenizer was trained with)", value,
                       ", ".join(missing) + (" is" if len(missing) == 1 else " are"))
    return source


def _reply(tokenizer: Any, messages: list[dict[str, str]], i: int, where: str) -> str:
    """Assistant turn i as the template writes it when it is the newest turn: text after the generation prompt."""
    prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
    upto = render(tokenizer, messages[: i + 1])
    if not upto.startswith(prompt):
        raise DataError(f"{where}: the chat template renders assistant turn {i} not as a continuation of its prompt "
                        "(generation prompt + reply); set data.chat_template to a template that does")
    return upto[len(prompt):]


def turn_by_turn_spans(tokenizer: Any, messages: list[dict[str, str]], text: str,
                       where: str = "conversation") -> list[tuple[int, int]]:
    """Reply spans in `text` (the whole conversation rendered) for templates that render a reply differently once it
    is history. Each reply is rendered as the newest turn; where `text` holds it verbatim (after the previous one)
    the whole of it is supervised, else its content plus the end-of-turn marker the template puts after it, as the
    history holds them. A reply found in neither form is an error, never a guessed mask."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":  # skip past it, so a reply is never found inside a user turn
            found = text.find(message["content"].strip(), cursor) if message["content"].strip() else -1
            cursor = found + len(message["content"].strip()) if found >= 0 else cursor
            continue
        reply = _reply(tokenizer, messages, i, where)
        reply = reply[:-1] if reply.endswith("\n") else reply  # the newline after the marker opens the next turn
        start = text.find(reply, cursor)
        if start >= 0:
            spans.append((start, start + len(reply)))
            cursor = start + len(reply)
            continue
        core = message["content"].split("</think>")[-1].strip()
        start = text.find(core, cursor) if core else -1
        if start < 0:
            raise DataError(f"{where}: the chat template rewrites assistant turn {i} in the history so that its text "
                            "cannot be found; set data.chat_template to a template that keeps replies verbatim")
        end = start + len(core)
        marker = reply[reply.rfind(core) + len(core):] if core in reply else ""
        shared = 0  # as much of the marker as the history keeps (Phi-3: "<|end|>" but not the final eos)
        while shared < len(marker) and end + shared < len(text) and text[end + shared] == marker[shared]:
            shared += 1
        end += len(marker[:shared].rstrip("\n"))
        spans.append((start, end))
        cursor = end
    return spans
