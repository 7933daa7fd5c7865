"""OpenAI chat layout: `{"messages": [{"role", "content"}]}`, content a string or a list of parts (`text`,
`image_url` with a path / file:// / data: URL, `input_audio` with base64 `data` and `format`, `image` / `audio` /
`video` parts naming a file or standing for the next item of a top-level `images` / `audios` / `videos` list, as TRL's
vision datasets write them); assistant `tool_calls` and `tool` turns. Preference and KTO records as TRL writes
them: `prompt` + `chosen`/`rejected` (or `completion` + `label`), each a string or messages, or, without a prompt,
two whole conversations sharing everything but the last reply."""

from __future__ import annotations

import json
from typing import Any

from mmadapt.data.formats.base import MEDIA_KEYS, Context, RecordFormat, completion_of, media_fields
from mmadapt.data.formats.sharegpt import TOOLS_INTRO
from mmadapt.data.tokenisation import PLACEHOLDERS

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_PART_MODALITY = {"image_url": "image", "image": "image", "input_audio": "audio", "audio": "audio",
                  "audio_url": "audio", "video_url": "video", "video": "video"}
_TOP = frozenset({"messages", "images", "audios", "videos", "tools"})


class _Media:
    """Media met in the parts, in order; parts without their own data take the next item of the top-level list."""

    def __init__(self, record: dict[str, Any], ctx: Context) -> None:
        self.listed = media_fields(record, ctx, singular=False)
        self.next = {m: 0 for m in MEDIA_KEYS}
        self.items: dict[str, list[str]] = {}

    def add(self, modality: str, part: dict[str, Any], ctx: Context, where: str) -> str:
        payload = part.get(part["type"])
        if not payload:
            listed = self.listed.get(modality, [])
            if self.next[modality] >= len(listed):
                raise ctx.error(f"{where}: a {part['type']} part with no data and no item left in '{MEDIA_KEYS[modality]}'")
            path = listed[self.next[modality]]
            self.next[modality] += 1
        else:
            path = ctx.media(payload, modality, where)[0]
        self.items.setdefault(modality, []).append(path)
        return PLACEHOLDERS[modality]


def _content(content: Any, media: _Media, ctx: Context, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ctx.error(f"{where}.content must be a string or a list of parts, got {type(content).__name__}")
    pieces = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(ctx.text(part.get("text"), f"{where}.content[{j}].text"))
        elif kind in _PART_MODALITY:
            pieces.append(media.add(_PART_MODALITY[kind], part, ctx, f"{where}.content[{j}]"))
        else:
            raise ctx.error(f"{where}.content[{j}] has type {kind!r}; valid: text, {', '.join(_PART_MODALITY)}")
    return "\n".join(pieces)


def _messages(messages: Any, media: _Media, ctx: Context, key: str) -> list[dict[str, str]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise ctx.error(f"missing '{key}' (a list of {{role, content}} messages)")
    out = []
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise ctx.error(f"{where} has role {role!r}; valid: {', '.join(_ROLES)}")
        content = message.get("content")
        if role == "assistant" and not content and message.get("tool_calls"):
            content = json.dumps(message["tool_calls"], ensure_ascii=False)  # the call is what the model writes
        ctx.unused.update(f"{key}[].{k}" for k in message if k not in ("role", "content", "tool_calls"))
        out.append({"role": _ROLES[role], "content": _content(content if content is not None else "", media, ctx, where)})
    return out


def _finish(record: dict[str, Any], media: _Media, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    for modality, listed in media.listed.items():
        if media.next[modality] not in (0, len(listed)):
            raise ctx.error(f"'{MEDIA_KEYS[modality]}' has {len(listed)} items but the messages use {media.next[modality]}")
        if media.next[modality] == 0:  # no parts referred to the list: its items go with placeholders in the text
            media.items.setdefault(modality, []).extend(listed)
    return {**body, **media.items}


def _conversation(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    media = _Media(record, ctx)
    messages = _messages(record.get("messages"), media, ctx, "messages")
    if record.get("tools"):
        tools = json.dumps(record["tools"], ensure_ascii=False)
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{TOOLS_INTRO}\n{tools}"}
        else:
            messages.insert(0, {"role": "system", "content": f"{TOOLS_INTRO}\n{tools}"})
    return _finish(record, media, ctx, {"conversations": messages})


def _split_implicit(chosen: Any, rejected: Any, ctx: Context) -> tuple[Any, Any, Any]:
    """TRL's implicit prompt: two conversations equal up to their last (assistant) message."""
    if not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
        raise ctx.error("missing 'prompt' (without one, 'chosen' and 'rejected' must be whole conversations)")
    if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        raise ctx.error("without a 'prompt', 'chosen' and 'rejected' must share every message but the last")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _prompted(record: dict[str, Any], ctx: Context, keys: tuple[str, ...]) -> dict[str, Any]:
    media = _Media(record, ctx)
    prompt = record.get("prompt")
    values = {k: record.get(k) for k in keys}
    if prompt is None and keys == ("chosen", "rejected"):
        prompt, values["chosen"], values["rejected"] = _split_implicit(values["chosen"], values["rejected"], ctx)
    body: dict[str, Any] = {"prompt": _messages(prompt, media, ctx, "prompt")}
    for key in keys:
        if key == "label":
            body["label"] = values["label"]
        else:
            body[key] = completion_of(values[key], ctx, key)
    return _finish(record, media, ctx, body)


def _detect(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return "role" in messages[0]
    for key in ("prompt", "chosen"):
        value = record.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
            return True
    return False


FORMAT = RecordFormat(
    name="openai",
    detect=_detect,
    readers={"conversation": _conversation,
             "preference": lambda r, c: _prompted(r, c, ("chosen", "rejected")),
             "kto": lambda r, c: _prompted(r, c, ("completion", "label"))},
    keys={"conversation": _TOP, "preference": _TOP | {"prompt", "chosen", "rejected"},
          "kto": _TOP | {"prompt", "completion", "label"}},
)
