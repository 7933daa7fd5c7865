"""Chunking by tokens with overlap: window arithmetic, exact character offsets, ids across pages, tokenizer choice."""

from __future__ import annotations

import pytest

from mmadapt.errors import ConfigError
from mmadapt.rag.chunk import (
    ChunkConfig, Document, chunk_documents, chunk_spans, hf_token_spans, load_token_spans, sha256_text, word_spans,
)


def doc(text: str, doc_id: str = "d", page: int | None = None, **metadata) -> Document:
    return Document(f"{doc_id}.txt", text, doc_id, page, "text", metadata, sha256_text(text))


def numbered_words(n: int) -> str:
    return "  ".join(f"w{i}" for i in range(n)) + "\n"  # double spaces: offsets must not assume single separators


@pytest.mark.parametrize("n,size,overlap", [(10, 4, 1), (10, 4, 0), (9, 3, 2), (3, 8, 2), (1, 1, 0), (12, 5, 4)])
def test_windows_advance_by_size_minus_overlap_and_cover_every_token(n, size, overlap):
    text = numbered_words(n)
    spans = chunk_spans(word_spans(text), size, overlap)
    windows = [text[s:e].split() for s, e in spans]
    words = text.split()
    step = size - overlap
    for i, window in enumerate(windows):
        assert window == words[i * step : i * step + size]
    assert windows[-1][-1] == words[-1]
    assert set(w for window in windows for w in window) == set(words)
    for prev, cur in zip(windows, windows[1:]):
        assert prev[-overlap:] == cur[:overlap] if overlap else not set(prev) & set(cur)
        assert not set(cur) <= set(prev)  # no window is wasted on tokens already fully covered


def test_windows_keep_words_whole_unless_a_word_is_longer_than_a_window():
    pieces = lambda text, n: [(i, min(i + 2, n)) for i in range(0, n, 2)]  # noqa: E731 - 2-character "##pieces"
    text = "abcdef ghij klmnop"
    spans = pieces(text, 6) + [(7, 9), (9, 11)] + [(12, 14), (14, 16), (16, 18)]
    assert [text[s:e] for s, e in chunk_spans(spans, size=4, overlap=1)] == ["abcdef", "ghij", "klmnop"]
    giant = "abcdefghijkl"
    assert [giant[s:e] for s, e in chunk_spans(pieces(giant, 12), size=4, overlap=1)] == ["abcdefgh", "ghijkl"]
    tail = "abcdef gh"  # the overlap would start inside "abcdef": the next window starts at "gh" instead
    spans = pieces(tail, 6) + [(7, 9)]
    assert [tail[s:e] for s, e in chunk_spans(spans, size=3, overlap=1)] == ["abcdef", "gh"]


def test_no_tokens_gives_no_chunks_and_bad_sizes_are_config_errors():
    assert chunk_spans([], 4, 1) == []
    with pytest.raises(ConfigError, match=r"chunk.overlap \(4\) must be smaller than chunk.size \(4\)"):
        chunk_spans(word_spans("a b c"), 4, 4)
    with pytest.raises(ConfigError, match="chunk.size must be >= 1"):
        chunk_spans(word_spans("a b c"), 0, 0)
    with pytest.raises(ValueError, match="chunk.size must be >= 1, got 0"):
        ChunkConfig(size=0)
    with pytest.raises(ValueError, match="chunk.overlap must be >= 0"):
        ChunkConfig(overlap=-1)


def test_chunks_are_exact_slices_with_offsets_page_and_ids_counting_across_pages():
    pages = [doc("alpha beta gamma delta epsilon", "report", page=1, lang="en"), doc("zeta eta theta", "report", page=2, lang="en"),
             doc("other document text", "memo")]
    chunks = chunk_documents(pages, word_spans, size=2, overlap=1)
    assert [c.chunk_id for c in chunks] == [f"report#{i}" for i in range(6)] + ["memo#0", "memo#1"]
    by_page = {(c.doc_id, c.page) for c in chunks}
    assert by_page == {("report", 1), ("report", 2), ("memo", None)}
    texts = {p.doc_id + str(p.page): p.text for p in pages}
    for c in chunks:
        assert c.text == texts[c.doc_id + str(c.page)][c.start : c.end]
        assert c.content_hash == sha256_text(c.text)
        assert c.source == f"{c.doc_id}.txt"
    assert chunks[0].text == "alpha beta" and chunks[4].text == "zeta eta" and chunks[4].start == 0
    assert chunks[0].doc_hash == pages[0].content_hash and chunks[4].doc_hash == pages[1].content_hash
    chunks[0].metadata["lang"] = "changed"
    assert chunks[1].metadata == {"lang": "en"} and pages[0].metadata == {"lang": "en"}  # copies, never shared


def test_an_image_document_is_one_chunk():
    image = Document("pics/cat.png", "", "pics/cat.png", None, "image", {"album": "pets"}, "abc123")
    (chunk,) = chunk_documents([image], word_spans, size=2, overlap=1)
    assert (chunk.chunk_id, chunk.modality, chunk.text, chunk.content_hash, chunk.doc_hash, chunk.metadata) == (
        "pics/cat.png#0", "image", "", "abc123", "abc123", {"album": "pets"})


def test_embedder_token_chunks_hold_at_most_size_tokens_and_keep_the_original_characters(minilm):
    tokenizer = minilm.model.tokenizer
    text = ("Hydrothermal vents — fissures on the seafloor — host unusual ecosystems. " * 6
            + "Café owners' résumés weren't reviewed; naïve tokenisation fails here.  \n\n  Trailing text.")
    spans = minilm.token_spans(text)
    assert spans == sorted(spans) and all(0 <= s < e <= len(text) for s, e in spans)
    chunks = chunk_documents([doc(text)], minilm.token_spans, size=16, overlap=4)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) <= 16
        assert chunk.start == 0 or text[chunk.start - 1].isspace()  # never opens or ends on a word fragment
        assert chunk.end == len(text) or text[chunk.end].isspace()
    assert chunks[-1].end == spans[-1][1] and chunks[0].start == spans[0][0]
    for prev, cur in zip(chunks, chunks[1:]):
        assert prev.start < cur.start <= prev.end < cur.end  # overlapping (or touching), always advancing


def test_load_token_spans_by_name(minilm):
    from mmadapt.rag.embed import default_model_path

    assert load_token_spans(ChunkConfig(tokenizer="words")) is word_spans
    assert load_token_spans(ChunkConfig(), minilm) is minilm.token_spans
    with pytest.raises(ConfigError, match="needs an embedder"):
        load_token_spans(ChunkConfig())
    by_path = load_token_spans(ChunkConfig(tokenizer=str(default_model_path())))
    assert by_path("Sea otters hold hands.") == minilm.token_spans("Sea otters hold hands.")
    with pytest.raises(ConfigError, match="chunk.tokenizer '/no/such/tokenizer' cannot be loaded"):
        load_token_spans(ChunkConfig(tokenizer="/no/such/tokenizer"))


def test_a_slow_tokenizer_is_refused_naming_why():
    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="not a fast tokenizer"):
        hf_token_spans(Slow())
