"""The data formats users already have, each mapped onto the one internal record (see `base`).

`read_dataset(data.train, data_cfg, kind)` reads one or several sources (files, folders, names in
`data.dataset_info`), recognises each source's layout (`data.formatting` or the registry entry's
`formatting`; `auto` looks at the first record), applies the column mapping, maps every record, warns once
per source about fields the mapping does not use, and mixes the sources by weight. Layouts are registered
by name in `mmadapt.registry` (`data_format`): llava, sharegpt, openai, alpaca.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from mmadapt import registry
from mmadapt.data.formats.base import Context, RecordFormat
from mmadapt.data.formats.media import DEFAULT_CACHE
from mmadapt.data.formats.sources import Source, read_registry, read_rows
from mmadapt.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

AUTO_ORDER = ("openai", "sharegpt", "alpaca", "llava")  # the first whose `detect` accepts the first record


def layout(source: Source, first: dict[str, Any]) -> RecordFormat:
    """The source's layout: by name, or the first (in AUTO_ORDER) that recognises its first record."""
    if source.formatting != "auto":
        return registry.resolve("data_format", source.formatting, where=f"{source.name}: formatting")
    for candidate in AUTO_ORDER:
        fmt = registry.resolve("data_format", candidate)
        if fmt.detect(rename_columns(first, source.columns, fmt)):
            return fmt
    raise DataError(f"{source.name}: cannot tell the layout of its records (keys {sorted(first)}); set data.formatting "
                    f"(or the dataset's 'formatting'): {', '.join(registry.names('data_format'))}")


def rename_columns(record: dict[str, Any], columns: dict[str, str], fmt: RecordFormat) -> dict[str, Any]:
    """Apply a column mapping {our key (or LLaMA-Factory's name for it): the file's column}."""
    if not columns:
        return record
    out = dict(record)
    for ours, theirs in columns.items():
        ours = fmt.aliases.get(ours, ours)
        if theirs in record and ours != theirs:
            out[ours] = out.pop(theirs)
    return out


def sources_of(spec: str | list[str], data_cfg: Any) -> list[Source]:
    """data.train / data.eval (one entry or several) as sources: registry names first, then paths."""
    names = [spec] if isinstance(spec, str) else list(spec)
    known = read_registry(data_cfg.dataset_info) if data_cfg.dataset_info else {}
    sources = []
    for name in names:
        if name in known:
            sources.append(known[name])
            continue
        if not Path(name).exists() and known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"data: {name!r} is neither a dataset in {data_cfg.dataset_info}"
                              f"{f' (did you mean {close[0]!r}?)' if close else ''} nor a file; datasets: {', '.join(known)}")
        root = Path(data_cfg.media_root) if data_cfg.media_root else Path(name).parent
        sources.append(Source(name=name, path=Path(name), formatting=data_cfg.formatting, columns=dict(data_cfg.columns),
                              media_root=root))
    unknown = set(data_cfg.weights) - {s.name for s in sources}
    if unknown:
        logger.warning("data.weights names %s, not among the datasets read here (%s)", sorted(unknown),
                       ", ".join(s.name for s in sources))
    registered = [s.name for s in sources if s.name in known]
    if registered and (data_cfg.columns or data_cfg.formatting != "auto"):
        logger.warning("data.columns / data.formatting apply to files named directly; %s use their entries in %s",
                       ", ".join(registered), data_cfg.dataset_info)
    return sources


def map_source(source: Source, kind: str, data_cfg: Any) -> list[tuple[str, dict[str, Any]]]:
    """One source's records in the internal form (errors name file:line; unused fields are one warning)."""
    if source.ranking is not None and source.ranking != (kind == "preference"):
        raise ConfigError(f"{source.name}: the registry says ranking={source.ranking}, but data.format needs "
                          f"{kind} records")
    rows = read_rows(source)
    if not rows:
        raise DataError(f"{source.path}: no records")
    fmt = layout(source, rows[0][1]) if kind != "text" else None
    cache = Path(data_cfg.media_cache or DEFAULT_CACHE).expanduser()
    root = source.media_root or source.path.parent
    unused: Counter = Counter()
    out = []
    for where, raw in rows:
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
        ctx = Context(where, root, cache, source.tags)
        try:
            record = _text_record(raw, source, ctx) if fmt is None else \
                fmt.read(rename_columns(raw, source.columns, fmt), kind, ctx)
        except DataError as e:
            if not data_cfg.skip_bad_samples:
                raise
            logger.warning("skipping bad sample: %s", e)  # as the example builders do with data.skip_bad_samples
            continue
        unused.update(ctx.unused)
        out.append((where, record))
    for key, count in sorted(unused.items()):
        logger.warning("%s: field %r is not used by the %s layout (%d of %d records); it is ignored", source.name, key,
                       fmt.name if fmt else "text", count, len(rows))
    return out


def _text_record(raw: dict[str, Any], source: Source, ctx: Context) -> dict[str, Any]:
    column = source.columns.get("text", "text")
    ctx.unused.update(k for k in raw if k != column)
    return {"text": raw.get(column)}


def mix(parts: list[tuple[Source, list[tuple[str, dict[str, Any]]]]], data_cfg: Any,
        seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Sources mixed by weight: weight w keeps w x a source's records (whole copies, then a seeded sample of the rest);
    the registry's num_samples fixes the count instead."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for source, records in parts:
        weight = data_cfg.weights.get(source.name, source.weight)
        target = source.num_samples if source.num_samples is not None else round(weight * len(records))
        copies, rest = divmod(target, len(records))
        chosen = [r for _ in range(copies) for r in records] + rng.sample(records, rest)
        seen: Counter = Counter()
        for where, record in chosen:  # a repeated record keeps a distinct `where` (a key of cached reference log-probs)
            seen[where] += 1
            out.append((where if seen[where] == 1 else f"{where} (copy {seen[where]})", record))
        if len(parts) > 1 or target != len(records):
            logger.info("data: %s gives %d of its %d records (weight %g)", source.name, len(chosen), len(records),
                        target / len(records))
    return out


def read_dataset(spec: str | list[str], data_cfg: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Records of kind conversation | preference | kto | text from data.train / data.eval, mixed by weight."""
    sources = sources_of(spec, data_cfg)
    return mix([(s, map_source(s, kind, data_cfg)) for s in sources], data_cfg)


def first_path(spec: str | list[str]) -> str:
    """The first entry of data.train / data.eval (a default media root for code that wants one path)."""
    return spec if isinstance(spec, str) else spec[0]
