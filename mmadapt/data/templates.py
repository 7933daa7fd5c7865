"""Chat templates and the supervised-span mask: loss only on assistant turns, located by character offsets.

Rendering each prefix of the conversation through the template finds where every assistant turn
starts and ends in the rendered text; the tokenizer's offset mapping then marks exactly the
tokens inside those spans. No token-count arithmetic, so a template or tokenizer change can never
silently shift the labels (LLaVA's 'tokenization mismatch').
"""

from __future__ import annotations

from typing import Any

from mmadapt.errors import DataError

# mmadapt's default when a tokenizer has no chat template (documented in the README): ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def ensure_chat_template(tokenizer: Any, template: str | None = None) -> None:
    """Use `template` if given, keep the tokenizer's own otherwise, and fall back to ChatML."""
    if template is not None:
        tokenizer.chat_template = template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


def to_messages(turns: list[dict[str, Any]], where: str) -> list[dict[str, str]]:
    """LLaVA `{from, value}` turns (or `{role, content}`) -> chat-template messages."""
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: conversations[{i}] is not an object")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in ROLE_MAP:
            raise DataError(f"{where}: conversations[{i}] has role {role!r}; valid: human, gpt (or user, assistant, system)")
        if not isinstance(content, str):
            raise DataError(f"{where}: conversations[{i}] has no text 'value'")
        messages.append({"role": ROLE_MAP[role], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant ('gpt') turn to learn from")
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
            raise DataError(
                "the chat template does not render conversations prefix-consistently; "
                "set data.chat_template to a template that does"
            )
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
