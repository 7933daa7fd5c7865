"""RAG additions for real corpora: docx and csv loaders, sentence- and heading-aware chunking, a reranker path without
a trained head refused, and a reader that sees a writer's new generation."""

import re

import pytest

from mmadapt.errors import ConfigError


def test_docx_headings_become_markdown_and_the_title_metadata(tmp_path):
    import docx

    from mmadapt.rag.ingest import ingest

    document = docx.Document()
    document.core_properties.title = "Pump manual"
    document.add_heading("Maintenance", level=1)
    document.add_paragraph("Clean the filter every month.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "part", "filter"
    document.save(tmp_path / "manual.docx")
    [doc] = ingest([tmp_path / "manual.docx"]).documents
    assert "## Maintenance" in doc.text and "Clean the filter every month." in doc.text and "part | filter" in doc.text
    assert doc.metadata["title"] == "Pump manual"


def test_csv_rows_are_records_with_numeric_metadata(tmp_path):
    from mmadapt.rag.ingest import ingest

    (tmp_path / "rows.csv").write_text("id,text,page,score\nr1,the first row,3,0.5\nr2,the second row,4,x\n")
    docs = ingest([tmp_path / "rows.csv"]).documents
    assert [d.text for d in docs] == ["the first row", "the second row"]
    assert docs[0].metadata["page"] == 3 and docs[0].metadata["score"] == 0.5 and docs[1].metadata["score"] == "x"


def words(text):
    import re

    return [m.span() for m in re.finditer(r"\S+", text)]


def test_sentence_and_markdown_chunking_keep_their_units_whole():
    from mmadapt.rag.chunk import document_spans

    text = "One two three. Four five six seven. Eight nine. Ten eleven twelve thirteen."
    spans = document_spans(text, words, size=6, overlap=0, strategy="sentences")
    chunks = [text[a:b].strip() for a, b in spans]
    assert all(c.endswith(".") for c in chunks)  # never cut inside a sentence
    assert " ".join(chunks).split() == text.split()
    markdown = "# Title\nintro words\n## Install\nstep one\nstep two\n## Use\nrun it"
    sections = [markdown[a:b] for a, b in document_spans(markdown, words, size=50, overlap=0, strategy="markdown")]
    assert any(s.lstrip().startswith("## Install") for s in sections)
    assert not any("## Install" in s and "## Use" in s for s in sections)  # one section per chunk here
    with pytest.raises(ConfigError, match="chunk.strategy"):
        document_spans(text, words, 6, 0, "paragraphs")


def test_a_reranker_without_a_trained_head_is_refused():
    from mmadapt.rag.embed import default_model_path
    from mmadapt.rag.retrieve import check_reranker

    with pytest.raises(ConfigError, match="reranker"):
        check_reranker(str(default_model_path()))  # an embedder's encoder: no classification head


def test_a_reader_sees_a_writers_new_generation(build_index, topic_corpus, minilm, tmp_path, backend):
    import numpy as np

    from mmadapt.rag.store import RagIndex

    build_index(topic_corpus.documents[:4], path=tmp_path / "idx", backend=backend)
    reader = RagIndex.open(tmp_path / "idx", embedder=minilm)
    before = reader.store["generation"]
    query = minilm.embed_queries([topic_corpus.queries[5]])
    assert all(h.doc_id != topic_corpus.documents[5].doc_id for h in reader.search(np.asarray(query), k=4)[0])
    RagIndex.open(tmp_path / "idx", embedder=minilm).add_documents(topic_corpus.documents[4:6])  # another handle
    hits = reader.search(np.asarray(query), k=1)[0]  # the search itself notices the new generation
    assert reader.store["generation"] > before and hits[0].doc_id == topic_corpus.documents[5].doc_id
    assert not reader.reload()  # nothing new since: one stat of manifest.json, no reload


def test_progress_bars_for_a_multi_batch_ingest_and_embedding(tmp_path, monkeypatch, capfd):
    """Ingest shows a bar on a terminal (tqdm decides; logs and pipes stay clean) and embedding shows one past
    4 batches, for any input size."""
    import io
    import sys

    from mmadapt.rag.embed import EmbedderConfig, load_embedder
    from mmadapt.rag.ingest import ingest

    for i in range(12):
        (tmp_path / f"{i}.txt").write_text(f"note {i} about the pump and the valve")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    report = ingest([tmp_path])
    monkeypatch.undo()
    assert len(report.documents) == 12 and re.search(r"ingest: 12 files", terminal.getvalue()), terminal.getvalue()
    capfd.readouterr()
    ingest([tmp_path])  # not a terminal: no bar
    assert "ingest" not in capfd.readouterr().err
    embedder = load_embedder(EmbedderConfig(batch_size=2))
    capfd.readouterr()
    assert embedder.embed_documents([d.text for d in report.documents]).shape == (12, embedder.dim)
    assert re.search(r"Batches: 100%.*6/6", capfd.readouterr().err)  # 6 batches of 2
    embedder.embed_documents(["one", "two"])
    assert "Batches" not in capfd.readouterr().err  # a single batch stays quiet
