"""Chat templates by name (`data.chat_template: llama3 | qwen2 | chatml | ...`), or copied from a tokenizer directory.

A value of `data.chat_template` is, in this order: a known name below; a local tokenizer directory
(its `chat_template.jinja` or `tokenizer_config.json`'s `chat_template`); a `.jinja` file; literal
Jinja (it must contain `{%` or `{{`). Anything else is a ConfigError listing the names, so a typo
never becomes a "template" that renders the same string for every conversation.

The templates reproduce the families' own formats for text conversations (no tools). Where a family
has no system role (Gemma, Mistral, Llama 2 folds it into `<<SYS>>`), the system prompt goes into
the first user turn, never dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)

# mmadapt's default when a tokenizer has no chat template (documented in the README): ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML = CHATML_TEMPLATE  # mmadapt's default, the same source

# Qwen2: ChatML with a default system prompt when the conversation has none.
QWEN2 = (
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}" + CHATML
)

# Qwen3: ChatML whose replies after the last user turn carry a <think> block (empty when the record has none),
# while earlier replies lose theirs: not prefix-consistent, so templates.py finds the replies turn by turn.
QWEN3 = (
    "{% set ns = namespace(last_user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "{% if loop.index0 > ns.last_user %}"
    "{{ '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = (bos_token or '') + content %}{% endif %}{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Shared by the families without a system role: the system prompt is prepended to the first user turn.
_FOLD_SYSTEM = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
)

GEMMA = (
    "{{ bos_token or '' }}" + _FOLD_SYSTEM +
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% set text = (system + '\n\n' + message['content']) if (loop.first and system) else message['content'] %}"
    "{{ '<start_of_turn>' + role + '\n' + text | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

MISTRAL = (
    "{{ bos_token or '' }}" + _FOLD_SYSTEM +
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{% set text = (system + '\n\n' + message['content']) if (loop.first and system) else message['content'] %}"
    "{{ '[INST] ' + text + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + (eos_token or '') }}{% endif %}"
    "{% endfor %}"
)

LLAMA2 = (
    _FOLD_SYSTEM +
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{% set text = ('<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content']) if (loop.first and system) "
    "else message['content'] %}"
    "{{ (bos_token or '') + '[INST] ' + text | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + (eos_token or '') }}{% endif %}"
    "{% endfor %}"
)

# Phi-3: the end-of-text token only after the last turn (so, like Qwen3, found turn by turn).
PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token or '' }}{% endif %}"
)

ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + (eos_token or '') + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# name -> (template, the marker strings it writes, which should be single tokens of the tokenizer)
NAMED_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (CHATML, ("<|im_start|>", "<|im_end|>")),
    "qwen2": (QWEN2, ("<|im_start|>", "<|im_end|>")),
    "qwen2.5": (QWEN2.replace("You are a helpful assistant.",
                              "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
                ("<|im_start|>", "<|im_end|>")),
    "qwen3": (QWEN3, ("<|im_start|>", "<|im_end|>", "<think>", "</think>")),
    "llama3": (LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "llama2": (LLAMA2, ()),
    "gemma": (GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    "mistral": (MISTRAL, ()),
    "phi3": (PHI3, ("<|user|>", "<|assistant|>", "<|end|>")),
    "zephyr": (ZEPHYR, ()),
}


def template_names() -> list[str]:
    return sorted(NAMED_TEMPLATES)


def _from_directory(directory: Path) -> str | None:
    """A tokenizer directory's own template (transformers writes it to chat_template.jinja or tokenizer_config.json)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"data.chat_template: {config} is not valid JSON: {e}") from None
        if isinstance(template, list):  # several named templates: the "default" one
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                            None)
        if isinstance(template, str):
            return template
    return None


def resolve_chat_template(value: str, key: str = "data.chat_template") -> str:
    """The Jinja source `value` stands for: a template name, a tokenizer directory, a .jinja file or literal Jinja."""
    if value in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[value][0]
    path = Path(value).expanduser() if len(value) < 4096 and "\n" not in value else None
    if path is not None and path.is_dir():
        template = _from_directory(path)
        if template is None:
            raise ConfigError(f"{key}: {path} has no chat template (no chat_template.jinja, no 'chat_template' in "
                              "tokenizer_config.json)")
        return template
    if path is not None and path.suffix == ".jinja":
        if not path.is_file():
            raise ConfigError(f"{key}: template file not found: {path}")
        return path.read_text(encoding="utf-8")
    if "{%" in value or "{{" in value:
        return value
    import difflib

    close = difflib.get_close_matches(value, NAMED_TEMPLATES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key}: {value!r} is not a known template{hint}, a tokenizer directory, a .jinja file or Jinja "
                      f"source; known templates: {', '.join(template_names())}")


def missing_markers(tokenizer: Any, value: str) -> list[str]:
    """The named template's markers that the tokenizer would split into pieces (not single tokens of its vocabulary)."""
    if value not in NAMED_TEMPLATES:
        return []
    vocab = tokenizer.get_vocab()
    return [m for m in NAMED_TEMPLATES[value][1] if m not in vocab]
