"""Ingest: every supported format read into Documents, duplicates dropped by content hash, and every file that
yields nothing reported with its reason."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mmadapt.rag.chunk import sha256_text
from mmadapt.rag.ingest import IngestConfig, ingest


def write_pdf(path: Path, pages: list[str], password: str | None = None) -> Path:
    """A PDF whose pages show the given lines of text (Helvetica), built with pypdf; '' makes a blank page."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica")}))
    for text in pages:
        page = writer.add_blank_page(612, 792)
        stream = DecodedStreamObject()
        shown = " ".join(f"({line}) '" for line in text.split("\n")) if text else ""
        stream.set_data(f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    if password:
        writer.encrypt(password)
    with open(path, "wb") as f:
        writer.write(f)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """One readable file of every kind, plus one broken file of most kinds."""
    from PIL import Image

    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("Plain notes about the harbour.\n")
    (root / "sub" / "guide.md").write_text("# Guide\n\nMarkdown text on tides.\n")
    (root / "page.html").write_text("<html><head><title>Lighthouse</title><style>p {color: red}</style>"
                                    "<script>var secret = 1;</script></head><body><p>The lamp turns nightly.</p>"
                                    "</body></html>")
    write_pdf(root / "manual.pdf", ["First page about ropes", "", "Third page about knots"])
    records = [{"id": "r1", "text": "Record one on sails.", "lang": "en"}, {"text": "Record two on masts.", "year": 1990},
               "not an object", {"title": "no text field"}, {"id": "r5", "text": "   "}]
    (root / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken json\n\n")
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / "photo.png")
    # files that yield nothing
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_text("  \n\n \t\n")
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "table.xlsx").write_bytes(b"PK\x03\x04 spreadsheet")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / ".hidden.txt").write_text("hidden files are not read")
    return root


def test_every_format_is_read_with_source_page_and_metadata(corpus: Path):
    report = ingest([corpus])
    docs = {d.doc_id: d for d in report.documents}
    assert docs[str(corpus / "notes.txt")].text == "Plain notes about the harbour."
    assert docs[str(corpus / "sub" / "guide.md")].text.startswith("# Guide")
    html = docs[str(corpus / "page.html")]
    assert html.text == "Lighthouse\nThe lamp turns nightly." and html.metadata == {"title": "Lighthouse"}
    pdf_pages = sorted((d.page, d.text) for d in report.documents if d.source.endswith("manual.pdf"))
    assert pdf_pages == [(1, "First page about ropes"), (3, "Third page about knots")]  # the blank page 2 yields nothing
    assert docs["r1"].text == "Record one on sails." and docs["r1"].metadata == {"lang": "en"}
    line2 = docs[f"{corpus / 'records.jsonl'}:2"]  # no id field: the record's FILE:LINE is its id
    assert line2.text == "Record two on masts." and line2.metadata == {"year": 1990}
    image = docs[str(corpus / "photo.png")]
    assert image.modality == "image" and image.text == ""
    assert image.content_hash == hashlib.sha256((corpus / "photo.png").read_bytes()).hexdigest()
    assert all(d.content_hash == sha256_text(d.text) for d in report.documents if d.modality == "text")
    assert not any("hidden" in d.source for d in report.documents)
    assert len(report.documents) == 8


def test_files_and_records_that_yield_nothing_are_skipped_with_a_reason(corpus: Path):
    report = ingest([corpus, corpus / "missing.txt"])
    skipped = {s.path: s.reason for s in report.skipped}
    by_name = {Path(p).name: r for p, r in skipped.items()}
    assert by_name["empty.txt"] == "empty (0 bytes)"
    assert by_name["blank.md"] == "empty (no text)"
    assert "binary" in by_name["binary.txt"]
    assert "not UTF-8" in by_name["latin1.txt"]
    assert "unsupported file type .xlsx" in by_name["table.xlsx"] and ".pdf" in by_name["table.xlsx"]
    assert by_name["broken.pdf"].startswith("unreadable PDF")
    assert by_name["broken.png"].startswith("unreadable image")
    assert by_name["missing.txt"] == "no such file or directory"
    jsonl = corpus / "records.jsonl"
    assert skipped[f"{jsonl}:3"] == "a record must be a JSON object"
    assert "no string field 'text'" in skipped[f"{jsonl}:4"]
    assert skipped[f"{jsonl}:5"] == "empty text"
    assert skipped[f"{jsonl}:6"].startswith("invalid JSON")
    assert report.files_read == 6  # txt, md, html, pdf, jsonl, png
    summary = report.summary()
    assert summary.splitlines()[0] == f"6 files read, 8 documents, {len(report.skipped)} skipped"
    assert f"skipped {corpus / 'binary.txt'}: binary file" in summary


def test_duplicate_content_is_kept_once_naming_the_first_copy(tmp_path: Path):
    (tmp_path / "a.txt").write_text("The same words.\n")
    (tmp_path / "b.txt").write_text("The same words.")  # identical after stripping
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "rec", "text": "The same words."}) + "\n"
                                      + json.dumps({"id": "new", "text": "Different words."}) + "\n")
    write_pdf(tmp_path / "d.pdf", ["Different words.", "Another page"])
    report = ingest([tmp_path])
    assert [d.doc_id for d in report.documents] == [str(tmp_path / "a.txt"), "new", str(tmp_path / "d.pdf")]
    assert report.documents[2].page == 2
    skipped = {s.path: s.reason for s in report.skipped}
    assert skipped == {str(tmp_path / "b.txt"): f"duplicate content of {tmp_path / 'a.txt'}",
                       "rec": f"duplicate content of {tmp_path / 'a.txt'}",
                       f"{tmp_path / 'd.pdf'} page 1": "duplicate content of new"}


def test_pdf_edge_cases(tmp_path: Path):
    write_pdf(tmp_path / "blank.pdf", ["", ""])
    write_pdf(tmp_path / "locked.pdf", ["secret text"], password="pw")
    report = ingest([tmp_path / "blank.pdf", tmp_path / "locked.pdf"])
    assert report.documents == []
    skipped = {Path(s.path).name: s.reason for s in report.skipped}
    assert "no extractable text" in skipped["blank.pdf"]
    assert skipped["locked.pdf"] == "encrypted PDF (needs a password)"


def test_options_text_key_id_key_images_size_and_json_lists(tmp_path: Path):
    from PIL import Image

    (tmp_path / "qa.JSON").write_text(json.dumps([{"key": "q1", "body": "First body."}, {"key": "q2", "body": "Second."}]))
    (tmp_path / "obj.json").write_text(json.dumps({"body": "not a list"}))
    Image.new("RGB", (4, 4)).save(tmp_path / "pic.jpg")
    (tmp_path / "big.txt").write_text("x" * 2000)
    report = ingest([tmp_path], IngestConfig(text_key="body", id_key="key", images=False, max_file_mb=0.001))
    assert [(d.doc_id, d.text) for d in report.documents] == [("q1", "First body."), ("q2", "Second.")]
    skipped = {Path(s.path).name: s.reason for s in report.skipped}
    assert skipped["obj.json"] == "a .json file must hold a list of records"
    assert skipped["pic.jpg"] == "images disabled (ingest.images: false)"
    assert "over ingest.max_file_mb=0.001" in skipped["big.txt"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlinks_are_skipped_unless_followed(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("linked text")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "link.txt").symlink_to(real / "a.txt")
    report = ingest([docs])
    assert report.documents == [] and "symbolic link" in report.skipped[0].reason
    followed = ingest([docs], IngestConfig(follow_symlinks=True))
    assert [d.text for d in followed.documents] == ["linked text"]


def test_special_files_are_reported_not_raised(tmp_path: Path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs named pipes")
    os.mkfifo(tmp_path / "pipe.txt")  # reading it would block forever
    (tmp_path / "ok.txt").write_text("fine")
    report = ingest([tmp_path])
    assert [d.text for d in report.documents] == ["fine"]
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [("pipe.txt", "not a regular file")]
