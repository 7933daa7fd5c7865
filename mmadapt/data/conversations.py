"""LLaVA-format conversations (and plain text) -> tokenised examples with expanded placeholders.

Every record is checked before training: roles, placeholders vs media, media files present.
Loss masks come from `templates.tokenize_conversation` (character offsets, not token counting).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmadapt.config import DataConfig
from mmadapt.data.templates import ensure_chat_template, to_messages, tokenize_conversation
from mmadapt.data.tokenisation import IGNORE_INDEX, PLACEHOLDERS, TokenisationSpec
from mmadapt.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class Example:
    where: str
    input_ids: list[int]
    labels: list[int]
    media: dict[str, list[Any]] = field(default_factory=dict)  # modality -> raw items (paths) in placeholder order


@dataclass
class DataStats:
    """What happened to the records; reported in the run summary and metrics.json."""

    counts: Counter = field(default_factory=Counter)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) for k, v in sorted(self.counts.items())}


def build_examples(records: list[tuple[str, dict[str, Any]]], build_one: Callable[[str, dict[str, Any]], Any],
                   skip_bad_samples: bool, stats: DataStats) -> list[Any]:
    """`build_one(where, record)` over every record: a bad one raises, or with skip_bad_samples is skipped and
    counted; None (dropped by truncation, counted by build_one) is left out."""
    examples = []
    for where, record in records:
        try:
            example = build_one(where, record)
        except DataError as e:
            if not skip_bad_samples:
                raise
            logger.warning("skipping bad sample: %s", e)
            stats.counts["skipped_bad"] += 1
            continue
        if example is not None:
            examples.append(example)
    stats.counts["examples"] += len(examples)
    if not examples:
        raise DataError("no usable examples left (see the warnings above)")
    return examples


def media_list(record: dict[str, Any], modality: str, where: str) -> list[Any]:
    value = record.get(modality)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str) or not item:
            raise DataError(f"{where}: '{modality}' must be a file path or a list of paths, got {item!r}")
    return items


def resolve_media(item: str, root: Path, where: str, modality: str) -> Path:
    path = Path(item)
    path = path if path.is_absolute() else root / path
    try:
        found = path.is_file()
    except OSError as e:  # a name longer than the OS allows (ENAMETOOLONG), a NUL byte, ...: not a file we can open
        raise DataError(f"{where}: {modality} path {item[:80]!r}... cannot be opened ({e.strerror or e}); "
                        "valid: a relative or absolute path to an existing file") from None
    if not found:
        raise DataError(f"{where}: {modality} file not found: {path}")
    return path


def expand_placeholders(input_ids: list[int], labels: list[int], token_id: int, count: int) -> tuple[list[int], list[int]]:
    """Each placeholder id becomes `count` copies (never supervised)."""
    ids_out, labels_out = [], []
    for tok, lab in zip(input_ids, labels):
        if tok == token_id:
            ids_out.extend([token_id] * count)
            labels_out.extend([IGNORE_INDEX] * count)
        else:
            ids_out.append(tok)
            labels_out.append(lab)
    return ids_out, labels_out


def record_media(spec: TokenisationSpec, record: dict[str, Any], messages: list[dict[str, str]], root: Path,
                 where: str, part: str, ids: list[int], labels: list[int]) -> tuple[list[int], list[int], dict[str, list[Path]]]:
    """A record's media checked against the placeholders in its `messages` (one item per placeholder, files present
    and decodable), and `ids`/`labels` with every placeholder expanded to its modality's media-token count.
    `part` names where the placeholders belong in errors ("text", "prompt")."""
    media: dict[str, list[Path]] = {}
    for modality, placeholder in PLACEHOLDERS.items():
        items = media_list(record, modality, where)
        n_placeholders = sum(m["content"].count(placeholder) for m in messages)
        if modality not in spec.media_tokens:
            if items or n_placeholders:
                raise DataError(f"{where}: has {modality} but the model has no {modality} encoder "
                                f"(model.encoders has: {', '.join(spec.modalities) or 'none'})")
            continue
        if n_placeholders != len(items):
            raise DataError(f"{where}: {n_placeholders} {placeholder} placeholder(s) in the {part} but "
                            f"{len(items)} {modality} item(s); put one {placeholder} where each item goes")
        if not items:
            continue
        media[modality] = [resolve_media(item, root, where, modality) for item in items]
        check = spec.check.get(modality)  # decode errors now, not mid-training
        for path in media[modality] if check else []:
            try:
                check(path)
            except DataError as e:
                raise DataError(f"{where}: {e}") from e
        ids, labels = expand_placeholders(ids, labels, spec.placeholder_id(modality), spec.media_tokens[modality])
    return ids, labels, media


class RecordBuilder:
    """What every builder of examples holds (the tokenizer, the data config, the media root, the drop counts) and does
    (build every record, truncate to max_length, drop what has nothing left to learn)."""

    def __init__(self, tokenizer: Any, data_cfg: DataConfig, data_file: str | Path) -> None:
        self.tokenizer = tokenizer
        self.cfg = data_cfg
        self.root = Path(data_cfg.media_root) if data_cfg.media_root else Path(data_file).parent
        self.stats = DataStats()

    def build_with(self, records: list[tuple[str, dict[str, Any]]], one: Callable[[str, dict[str, Any]], Any]
                   ) -> list[Any]:
        """`one(where, record)` over every record (see `build_examples`)."""
        return build_examples(records, one, self.cfg.skip_bad_samples, self.stats)

    def truncate(self, example: Example, cuts_media: Callable[[int], bool]) -> Example | None:
        """`example` cut to max_length, or None (counted) when the cut would split a media item
        (`cuts_media(limit)`) or leave no supervised token."""
        limit = self.cfg.max_length
        if len(example.input_ids) > limit:
            if cuts_media(limit):
                self.stats.counts["dropped_truncated_media"] += 1
                logger.warning("%s: dropped, max_length=%d would cut a media item", example.where, limit)
                return None
            example.input_ids, example.labels = example.input_ids[:limit], example.labels[:limit]
            self.stats.counts["truncated"] += 1
        if all(label == IGNORE_INDEX for label in example.labels[1:]):
            self.stats.counts["dropped_no_target"] += 1
            logger.warning("%s: dropped, no supervised tokens left after truncation", example.where)
            return None
        return example


class SpecBuilder(RecordBuilder):
    """A RecordBuilder over a TokenisationSpec, whose tokenizer gets its chat template (data.chat_template, else its
    own, else ChatML)."""

    def __init__(self, spec: TokenisationSpec, data_cfg: DataConfig, data_file: str | Path) -> None:
        super().__init__(spec.tokenizer, data_cfg, data_file)
        self.spec = spec
        ensure_chat_template(self.tokenizer, data_cfg.chat_template)


class ExampleBuilder(SpecBuilder):
    """Turns raw records into `Example`s for one tokenisation spec (tokenizer, modalities, token counts)."""

    def build(self, records: list[tuple[str, dict[str, Any]]]) -> list[Example]:
        return self.build_with(records, self.build_one)

    def build_one(self, where: str, record: dict[str, Any]) -> Example | None:
        if self.cfg.format == "text":
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: a 'text' record needs a non-empty 'text' string")
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"] + [self.tokenizer.eos_token_id]
            return self._truncate(Example(where, ids, list(ids)))
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: missing 'conversations' (a list of {{from, value}} turns)")
        messages = to_messages(turns, where)
        input_ids, supervised = tokenize_conversation(self.tokenizer, self.spec.with_placeholders(messages))
        labels = [tok if sup else IGNORE_INDEX for tok, sup in zip(input_ids, supervised)]
        input_ids, labels, media = record_media(self.spec, record, messages, self.root, where, "text", input_ids, labels)
        return self._truncate(Example(where, input_ids, labels, media))

    def _truncate(self, example: Example) -> Example | None:
        media_ids = {self.spec.placeholder_id(m) for m in example.media}
        return self.truncate(example, lambda limit: any(t in media_ids for t in example.input_ids[limit:]))
