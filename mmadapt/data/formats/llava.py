"""LLaVA layout (mmadapt's own): `{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "image": path or [paths]}`
(`audio`, `video` alike); preference `{"prompt", "chosen", "rejected", "image"}` and KTO `{"prompt", "completion",
"label"}`, a prompt being a string or a list of turns (as TRL writes them too); text `{"text"}`."""

from __future__ import annotations

from typing import Any

from mmadapt.data.formats.base import Context, RecordFormat, media_fields

_MEDIA = frozenset({"image", "audio", "video", "images", "audios", "videos"})


def _conversation(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ctx.error("missing 'conversations' (a list of {from, value} turns)")
    return {"conversations": turns, **media_fields(record, ctx)}


def _prompted(record: dict[str, Any], ctx: Context, *keys: str) -> dict[str, Any]:
    """The record's prompt and completion fields as they are (preference.py checks them), media resolved."""
    return {"prompt": record.get("prompt"), **{k: record.get(k) for k in keys if k in record}, **media_fields(record, ctx)}


def _text(record: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"text": record.get("text")}


def _detect(record: dict[str, Any]) -> bool:
    turns = record.get("conversations")
    if isinstance(turns, list):
        return not (_MEDIA - {"image", "audio", "video"}) & set(record) and "system" not in record and "tools" not in record
    return "prompt" in record or "text" in record


FORMAT = RecordFormat(
    name="llava",
    detect=_detect,
    readers={"conversation": _conversation,
             "preference": lambda r, c: _prompted(r, c, "chosen", "rejected"),
             "kto": lambda r, c: _prompted(r, c, "completion", "label"),
             "text": _text},
    keys={"conversation": frozenset({"conversations"}) | _MEDIA,
          "preference": frozenset({"prompt", "chosen", "rejected"}) | _MEDIA,
          "kto": frozenset({"prompt", "completion", "label"}) | _MEDIA,
          "text": frozenset({"text"})},
)
