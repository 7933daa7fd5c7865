"""The one internal record every layout maps onto, and what a layout reader is given (`Context`).

Internal records (what `conversations.ExampleBuilder` and `preference.PreferenceTokenizer` read):
- conversation: `{"conversations": [{"role": system|user|assistant|tool, "content": str}], "image": [path], ...}`
- preference:   `{"prompt": [turns ending with a user turn], "chosen": str, "rejected": str, "image": [...]}`
- kto:          `{"prompt": [turns], "completion": str, "label": bool, "image": [...]}`
- text:         `{"text": str}`
Media paths are absolute (resolved against the dataset's media root, or written from embedded bytes into
the media cache), with one `<image>` / `<audio>` / `<video>` placeholder in the text per item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmadapt.data.formats.media import media_file
from mmadapt.errors import DataError

MEDIA_KEYS = {"image": "images", "audio": "audios", "video": "videos"}  # modality -> the plural column name
KINDS = ("conversation", "preference", "kto", "text")


@dataclass
class Context:
    """One record's reading context: where it is (file:line), its media root, the cache for embedded media,
    the role/content tags of its dataset, and the keys the reader left unused (warned about once per dataset)."""

    where: str
    root: Path
    cache: Path
    tags: dict[str, str] = field(default_factory=dict)
    unused: set[str] = field(default_factory=set)

    def error(self, message: str) -> DataError:
        return DataError(f"{self.where}: {message}")

    def media(self, value: Any, modality: str, key: str) -> list[str]:
        """A media column (one item or a list) as absolute file paths."""
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [str(media_file(item, self.root, self.cache, f"{self.where}: {key}[{i}]", modality))
                for i, item in enumerate(items)]

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(f"'{key}' must be a string, got {type(value).__name__}")
        return value


@dataclass(frozen=True)
class RecordFormat:
    """A record layout: which records it recognises and how each kind of record maps onto the internal one.

    `readers[kind](record, ctx) -> internal record`; `keys[kind]`: the top-level keys that kind reads (any
    other key of a record is reported as unused).
    """

    name: str
    detect: Callable[[dict[str, Any]], bool]
    readers: dict[str, Callable[[dict[str, Any], Context], dict[str, Any]]]
    keys: dict[str, frozenset[str]]
    aliases: dict[str, str] = field(default_factory=dict)  # LLaMA-Factory column names -> this layout's keys

    def read(self, record: dict[str, Any], kind: str, ctx: Context) -> dict[str, Any]:
        if kind not in self.readers:
            raise ctx.error(f"the {self.name} layout has no {kind} records; layouts with {kind} records: see "
                            "mmadapt.data.formats")
        ctx.unused.update(k for k in record if k not in self.keys[kind] and k != "id")
        return self.readers[kind](record, ctx)


def media_fields(record: dict[str, Any], ctx: Context, singular: bool = True, plural: bool = True) -> dict[str, list[str]]:
    """The internal media lists from `image`/`images`, `audio`/`audios`, `video`/`videos` columns."""
    out: dict[str, list[str]] = {}
    for modality, many in MEDIA_KEYS.items():
        items = (ctx.media(record.get(modality), modality, modality) if singular else []) + \
                (ctx.media(record.get(many), modality, many) if plural else [])
        if items:
            out[modality] = items
    return out


def completion_of(value: Any, ctx: Context, key: str, role_key: str = "role", content_key: str = "content") -> str:
    """A completion: a string, one assistant turn `{role, content}` (or {from, value}), or a list holding one."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        content = value.get(content_key, value.get("content", value.get("value")))
        if not isinstance(content, str):
            raise ctx.error(f"'{key}' must hold the reply text in '{content_key}'")
        return content
    if not isinstance(value, str):
        raise ctx.error(f"missing '{key}' (a string or one assistant turn), got {type(value).__name__}")
    return value
