"""Alpaca layout: `{"instruction", "input", "output", "system", "history": [[query, reply], ...]}` (the user turn is
instruction and input joined by a newline, as LLaMA-Factory does), media in `images` / `videos` / `audios`;
preference records with `chosen` / `rejected` strings instead of `output`, KTO records with `kto_tag`."""

from __future__ import annotations

from typing import Any

from mmadapt.data.formats.base import Context, RecordFormat, media_fields

_TOP = frozenset({"instruction", "input", "system", "history", "images", "videos", "audios"})


def _prompt(record: dict[str, Any], ctx: Context) -> list[dict[str, str]]:
    instruction = ctx.text(record.get("instruction"), "instruction")
    query = record.get("input") or ""
    messages: list[dict[str, str]] = []
    if record.get("system"):
        messages.append({"role": "system", "content": ctx.text(record["system"], "system")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise ctx.error("'history' must be a list of [query, reply] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ctx.error(f"history[{i}] must be a [query, reply] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    content = "\n".join(part for part in (instruction, ctx.text(query, "input")) if part)
    return messages + [{"role": "user", "content": content}]


def _conversation(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    reply = ctx.text(record.get("output"), "output")
    return {"conversations": _prompt(record, ctx) + [{"role": "assistant", "content": reply}], **media_fields(record, ctx)}


def _preference(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"prompt": _prompt(record, ctx), "chosen": record.get("chosen"), "rejected": record.get("rejected"),
            **media_fields(record, ctx)}


def _kto(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"prompt": _prompt(record, ctx), "completion": record.get("output"), "label": record.get("kto_tag"),
            **media_fields(record, ctx)}


FORMAT = RecordFormat(
    name="alpaca",
    detect=lambda record: "instruction" in record,
    readers={"conversation": _conversation, "preference": _preference, "kto": _kto},
    keys={"conversation": _TOP | {"output"}, "preference": _TOP | {"chosen", "rejected"}, "kto": _TOP | {"output", "kto_tag"}},
    aliases={"prompt": "instruction", "query": "input", "response": "output"},
)
