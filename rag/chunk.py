"""Chunking by tokens with overlap; every chunk keeps its source, page and character offsets into the document.

Chunks are cut on token boundaries of the embedder's own tokenizer (so a chunk never exceeds what the
embedder reads) and sliced from the original text by character offsets, so a cited passage is
exactly what the document says, never a detokenised approximation.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mmadapt.errors import ConfigError

TokenSpans = Callable[[str], list[tuple[int, int]]]
_WORD = re.compile(r"\S+")
# A sentence ends at . ! or ? (then closing quotes/brackets) before whitespace, or at a blank line or a line break
# before a markdown heading or list item; decimals ("3.5") and mid-word dots never end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=\s{0,3}(?:#{1,6}\s|[-*+]\s|\d+[.)]\s))")
_HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s+\S.*$", re.M)
STRATEGIES = ("tokens", "sentences", "markdown")


@dataclass
class ChunkConfig:
    """How documents are cut into passages."""

    size: int | None = None  # tokens per chunk; None: the embedder's limit (at most 256)
    overlap: int = 32  # tokens shared by consecutive chunks, so a fact cut at a boundary is whole in one of them
    tokenizer: str = "embedder"  # "embedder" (its tokenizer) | "words" (whitespace) | a HF tokenizer id or path
    # tokens: fixed token windows; sentences: whole sentences packed up to `size` (overlap in whole sentences);
    # markdown: never across a heading, each section packed by sentences
    strategy: str = "tokens"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"chunk.strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"chunk.size must be >= 1, got {self.size}")
        if self.overlap < 0:
            raise ValueError(f"chunk.overlap must be >= 0, got {self.overlap}")


@dataclass
class Document:
    """One unit of ingested content: a text file, a PDF page, a JSONL record or an image."""

    source: str  # the file it came from
    text: str  # extracted text ("" for an image)
    doc_id: str  # stable id: the record's id for JSONL, else the source path
    page: int | None = None  # 1-based PDF page
    modality: str = "text"  # "text" | "image"
    metadata: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""  # SHA-256 of the content (text, or the image's bytes)


@dataclass
class Chunk:
    """A passage as stored in the index."""

    chunk_id: str
    text: str
    source: str
    doc_id: str
    page: int | None = None
    start: int = 0  # character offsets into the document (the PDF page) text
    end: int = 0
    modality: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""  # SHA-256 of the chunk's text (or of the image for an image chunk)
    doc_hash: str = ""  # the document's content hash (de-duplication across sources)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words as (start, end) character spans."""
    return [m.span() for m in _WORD.finditer(text)]


def hf_token_spans(tokenizer: Any) -> TokenSpans:
    """Character spans of a fast HF tokenizer's tokens (special tokens excluded)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"chunk.tokenizer: {type(tokenizer).__name__} is not a fast tokenizer (needed for character offsets)")

    def spans(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(s), int(e)) for s, e in enc["offset_mapping"] if e > s]

    return spans


def load_token_spans(config: ChunkConfig, embedder: Any | None = None) -> TokenSpans:
    """The tokenizer a ChunkConfig names, as a text -> token spans function."""
    if config.tokenizer == "words":
        return word_spans
    if config.tokenizer == "embedder":
        if embedder is None:
            raise ConfigError("chunk.tokenizer 'embedder' needs an embedder; use 'words' or a tokenizer path")
        return embedder.token_spans
    from transformers import AutoTokenizer

    try:
        return hf_token_spans(AutoTokenizer.from_pretrained(config.tokenizer))
    except OSError as e:
        raise ConfigError(f"chunk.tokenizer {config.tokenizer!r} cannot be loaded: {e}") from e


def chunk_spans(token_spans: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of at most `size` tokens, each starting up to `overlap` tokens before the previous one ended,
    as character (start, end) spans.

    Windows begin and end on word boundaries (a token glued to the previous one, like a "##piece", continues its
    word), so a passage never opens on a word fragment; only a word longer than `size` tokens is cut inside.
    Every token is in some window, the last window ends at the last token, and no window is a subset of the
    previous one.
    """
    if size < 1:
        raise ConfigError(f"chunk.size must be >= 1, got {size}")
    if overlap >= size:
        raise ConfigError(f"chunk.overlap ({overlap}) must be smaller than chunk.size ({size})")
    n = len(token_spans)
    word_start = [i == 0 or token_spans[i][0] != token_spans[i - 1][1] for i in range(n)]
    out: list[tuple[int, int]] = []
    start, prev_stop = 0, 0
    while start < n:
        stop = min(start + size, n)
        if stop < n and not word_start[stop]:
            back = stop
            while back > max(start, prev_stop) and not word_start[back]:
                back -= 1
            if back > max(start, prev_stop):
                stop = back  # end before the word that would be cut
        out.append((token_spans[start][0], token_spans[stop - 1][1]))
        if stop == n:
            break
        # Start the next window `overlap` tokens back, moved forward to a word start (less overlap, never a gap).
        nxt = max(stop - overlap, start + 1)
        first_word = next((i for i in range(nxt, stop + 1) if word_start[i]), None)
        start, prev_stop = (first_word if first_word is not None else nxt), stop  # None: inside one giant word
    return out


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences (and headings, list items, paragraphs without end punctuation) as character spans."""
    out, pos = [], 0
    for m in _SENTENCE_END.finditer(text):
        span = _trimmed(text, pos, m.start())
        if span:
            out.append(span)
        pos = m.end()
    span = _trimmed(text, pos, len(text))
    out = out + [span] if span else out
    split = []  # a heading line is a sentence of its own even without a blank line after it
    for start, end in out:
        newline = text.find("\n", start, end)
        if newline > 0 and _HEADING_LINE.fullmatch(text[start:newline].strip()):
            split += [s for s in (_trimmed(text, start, newline), _trimmed(text, newline, end)) if s]
        else:
            split.append((start, end))
    return split


def section_spans(text: str) -> list[tuple[int, int]]:
    """Markdown sections: each heading line with what follows it up to the next heading; a heading with no text
    of its own (directly followed by a sub-heading) stays with the next section."""
    cuts = [m.start() for m in _HEADING_LINE.finditer(text)]
    bounds = [0, *[c for c in cuts if c > 0], len(text)]
    out: list[tuple[int, int]] = []
    start = 0
    for end in bounds[1:]:
        body = text[start:end].split("\n", 1)
        if _HEADING_LINE.fullmatch(body[0].strip()) and (len(body) == 1 or not body[1].strip()) and end < len(text):
            continue  # a bare heading: joined to the next section
        span = _trimmed(text, start, end)
        if span:
            out.append(span)
        start = end
    return out


def pack_spans(units: list[tuple[int, int]], token_spans: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Consecutive units (sentences) packed into windows of at most `size` tokens; the next window repeats the last
    whole units of the previous one that fit in `overlap` tokens. A unit longer than `size` is cut by tokens."""
    starts = [s for s, _ in token_spans]
    out: list[tuple[int, int]] = []
    group: list[tuple[int, int, int]] = []  # (start, end, tokens)

    def emit() -> None:
        if group:
            out.append((group[0][0], group[-1][1]))

    for start, end in units:
        lo, hi = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        n = hi - lo
        if n > size:  # one giant sentence: fixed token windows inside it
            emit()
            group = []
            out.extend(chunk_spans(token_spans[lo:hi], size, overlap))
            continue
        if group and sum(g[2] for g in group) + n > size:
            emit()
            carried: list[tuple[int, int, int]] = []
            for g in reversed(group):  # the last whole units within `overlap` tokens, if the new unit still fits
                if sum(c[2] for c in carried) + g[2] > overlap or sum(c[2] for c in carried) + g[2] + n > size:
                    break
                carried.insert(0, g)
            group = carried
        group.append((start, end, n))
    emit()
    return out


def document_spans(text: str, spans_fn: TokenSpans, size: int, overlap: int, strategy: str = "tokens") -> list[tuple[int, int]]:
    """Character spans of the chunks of one text by `strategy` (tokens | sentences | markdown)."""
    tokens = spans_fn(text)
    if strategy == "tokens":
        return chunk_spans(tokens, size, overlap)
    if strategy == "sentences":
        return pack_spans(sentence_spans(text), tokens, size, overlap)
    if strategy != "markdown":
        raise ConfigError(f"chunk.strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    out = []
    for start, end in section_spans(text):
        section = [(start + s, start + e) for s, e in sentence_spans(text[start:end])]
        out += pack_spans(section, tokens, size, overlap)
    return out


def chunk_documents(
    documents: Iterable[Document], spans_fn: TokenSpans, size: int, overlap: int, strategy: str = "tokens",
) -> list[Chunk]:
    """Cut documents into chunks; ids are `DOC_ID#N`, N counting across a document's pages."""
    chunks: list[Chunk] = []
    ordinal: dict[str, int] = {}
    for doc in documents:
        if doc.modality != "text":
            n = ordinal.get(doc.doc_id, 0)
            ordinal[doc.doc_id] = n + 1
            chunks.append(Chunk(f"{doc.doc_id}#{n}", doc.text, doc.source, doc.doc_id, doc.page, 0, len(doc.text),
                                doc.modality, dict(doc.metadata), doc.content_hash, doc.content_hash))
            continue
        for start, end in document_spans(doc.text, spans_fn, size, overlap, strategy):
            text = doc.text[start:end]
            n = ordinal.get(doc.doc_id, 0)
            ordinal[doc.doc_id] = n + 1
            chunks.append(Chunk(f"{doc.doc_id}#{n}", text, doc.source, doc.doc_id, doc.page, start, end,
                                "text", dict(doc.metadata), sha256_text(text), doc.content_hash))
    return chunks
