"""ShareGPT layout as LLaMA-Factory writes it: `conversations` (or `messages`) of `{from, value}` (or `{role,
content}`) turns, roles human/gpt/system/function_call/observation, top-level `system` and `tools`, media in
`images` / `videos` / `audios` lists; preference records add `chosen` / `rejected` (one turn each) after a
conversation that ends with the user, KTO records a `kto_tag`. Role and content tags follow the dataset's `tags`
(LLaMA-Factory's `role_tag`, `content_tag`, `user_tag`, ...)."""

from __future__ import annotations

import json
from typing import Any

from mmadapt.data.formats.base import Context, RecordFormat, completion_of, media_fields

_TOP = frozenset({"conversations", "messages", "system", "tools", "images", "videos", "audios", "image", "audio",
                  "video"})
# LLaMA-Factory tag name -> (default value, our role)
_ROLE_TAGS = {"user_tag": ("human", "user"), "assistant_tag": ("gpt", "assistant"), "system_tag": ("system", "system"),
              "function_tag": ("function_call", "assistant"), "observation_tag": ("observation", "tool")}
_PLAIN_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "tool": "tool"}
TOOLS_INTRO = "You can call these tools (JSON schema):"


def _roles(ctx: Context) -> dict[str, str]:
    roles = dict(_PLAIN_ROLES)
    roles.update({ctx.tags.get(tag, default): ours for tag, (default, ours) in _ROLE_TAGS.items()})
    return roles


def turns_of(record: dict[str, Any], ctx: Context) -> list[dict[str, str]]:
    """The record's turns as `{role, content}`, the top-level system prompt (and tools) first."""
    key = "conversations" if "conversations" in record else "messages"
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise ctx.error(f"missing '{key}' (a list of turns)")
    role_tag, content_tag = ctx.tags.get("role_tag", "from"), ctx.tags.get("content_tag", "value")
    roles = _roles(ctx)
    out: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ctx.error(f"{key}[{i}] is not an object")
        role = turn.get(role_tag, turn.get("role"))
        content = turn.get(content_tag, turn.get("content"))
        if role not in roles:
            raise ctx.error(f"{key}[{i}] has role {role!r}; valid: {', '.join(sorted(roles))} (set the dataset's tags "
                            "to map other role names)")
        if not isinstance(content, str):
            raise ctx.error(f"{key}[{i}] has no text '{content_tag}'")
        ctx.unused.update(f"{key}[].{k}" for k in turn if k not in (role_tag, content_tag, "role", "content"))
        out.append({"role": roles[role], "content": content})
    system = record.get("system")
    tools = record.get("tools")
    if tools:  # the system prompt carries the tool schemas: nothing of the record is lost
        tools_text = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
        system = f"{system}\n\n{TOOLS_INTRO}\n{tools_text}" if system else f"{TOOLS_INTRO}\n{tools_text}"
    if system:
        if out[0]["role"] == "system":
            raise ctx.error("both a top-level 'system' and a system turn; keep one")
        out.insert(0, {"role": "system", "content": ctx.text(system, "system")})
    return out


def _conversation(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"conversations": turns_of(record, ctx), **media_fields(record, ctx)}


def _preference(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    content_tag = ctx.tags.get("content_tag", "value")
    return {"prompt": turns_of(record, ctx),
            "chosen": completion_of(record.get("chosen"), ctx, "chosen", content_key=content_tag),
            "rejected": completion_of(record.get("rejected"), ctx, "rejected", content_key=content_tag),
            **media_fields(record, ctx)}


def _kto(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    turns = turns_of(record, ctx)
    if turns[-1]["role"] != "assistant":
        raise ctx.error("a KTO record's conversation must end with the assistant turn being judged")
    return {"prompt": turns[:-1], "completion": turns[-1]["content"], "label": record.get("kto_tag"),
            **media_fields(record, ctx)}


def _detect(record: dict[str, Any]) -> bool:
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        return False
    return "from" in turns[0] or bool({"system", "tools", "images", "videos", "audios"} & set(record))


FORMAT = RecordFormat(
    name="sharegpt",
    detect=_detect,
    readers={"conversation": _conversation, "preference": _preference, "kto": _kto},
    keys={"conversation": _TOP, "preference": _TOP | {"chosen", "rejected"}, "kto": _TOP | {"kto_tag"}},
    aliases={"messages": "conversations"},
)
