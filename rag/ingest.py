"""Ingest files into Documents: txt, md, html (bs4), pdf (pypdf), docx (python-docx), JSONL and CSV records, images.

Every file that yields nothing says why in the report (empty, binary, unreadable, unsupported,
duplicate content); a corpus with one broken file still builds, and the user sees which file and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mmadapt.errors import DataError
from tqdm.auto import tqdm

from mmadapt.rag.chunk import Document, sha256_text

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
RECORD_SUFFIXES = {".jsonl", ".json"}
TABLE_SUFFIXES = {".csv", ".tsv"}
SUPPORTED = sorted(TEXT_SUFFIXES | HTML_SUFFIXES | IMAGE_SUFFIXES | RECORD_SUFFIXES | TABLE_SUFFIXES | {".pdf", ".docx"})


@dataclass
class IngestConfig:
    """Which files are read and how records are interpreted."""

    text_key: str = "text"  # JSONL: the field holding the passage text
    id_key: str = "id"  # JSONL: the field holding a record's stable id (default: FILE:LINE)
    images: bool = True  # index images (needs an image-capable embedder such as open_clip)
    max_file_mb: float = 100.0
    follow_symlinks: bool = False


@dataclass
class Skipped:
    path: str  # a file, or FILE:LINE for one JSONL record
    reason: str


@dataclass
class IngestReport:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files_read: int = 0

    def summary(self) -> str:
        lines = [f"{self.files_read} files read, {len(self.documents)} documents, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


class _Skip(Exception):
    """Raised by a reader: this file (or record) yields nothing, for the given reason."""


def iter_files(paths: Iterable[str | os.PathLike], follow_symlinks: bool = False) -> Iterable[Path]:
    """Files named, and files under directories named (sorted, hidden entries left out)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=follow_symlinks):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise _Skip("binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Skip(f"not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def _clean(text: str) -> str:
    """Trim trailing spaces and runs of blank lines (HTML and PDF extraction leave many)."""
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _html(path: Path) -> tuple[str, dict[str, Any]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    return _clean(soup.get_text("\n")), ({"title": title} if title else {})


def _pdf_pages(path: Path) -> list[tuple[int, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError  # base of PdfReadError and DependencyError (AES without a crypto package)

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _Skip("encrypted PDF (needs a password)")
        pages = [(i + 1, _clean(page.extract_text() or "")) for i, page in enumerate(reader.pages)]
    except _Skip:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise _Skip(f"unreadable PDF: {e}") from None
    pages = [(n, t) for n, t in pages if t]
    if not pages:
        raise _Skip("PDF has no extractable text (scanned pages need OCR first)")
    return pages


def _records(path: Path, config: IngestConfig, report: IngestReport) -> list[Document]:
    """JSONL (one object per line) or a JSON list: `text_key` is the passage, other keys become metadata."""
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Skip(f"invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(items, list):
            raise _Skip("a .json file must hold a list of records")
        numbered = [(i + 1, item, None) for i, item in enumerate(items)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line), None))
            except json.JSONDecodeError as e:
                numbered.append((n, None, f"invalid JSON: {e.msg}"))
    docs, bad = [], 0
    for n, item, error in numbered:
        where = f"{path}:{n}"
        if error is None and not isinstance(item, dict):
            error = "a record must be a JSON object"
        if error is None and not isinstance(item.get(config.text_key), str):
            error = f"no string field {config.text_key!r} (set ingest.text_key to the field holding the text)"
        if error is None and not item[config.text_key].strip():
            error = "empty text"
        if error is not None:
            report.skipped.append(Skipped(where, error))
            bad += 1
            continue
        doc_id = str(item.get(config.id_key, where))
        meta = {k: v for k, v in item.items() if k not in (config.text_key, config.id_key)}
        body = item[config.text_key].strip()
        docs.append(Document(str(path), body, doc_id, None, "text", meta, sha256_text(body)))
    if not docs and not bad:
        raise _Skip("no records")
    return docs


def _docx(path: Path) -> tuple[str, dict[str, Any]]:
    """A Word document's paragraphs and tables as text; headings become markdown headings (so the markdown
    chunker and `rag tune`'s heading pairs see its sections); the core title, if set, is metadata."""
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as e:  # a damaged file surfaces as BadZipFile, KeyError, lxml or python-docx errors: all a skip
        raise _Skip(f"unreadable docx: {type(e).__name__}: {e}") from None
    lines = []
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        level = style.removeprefix("Heading ").strip()
        if style == "Title":
            lines.append(f"# {text}")
        elif style.startswith("Heading ") and level.isdigit():
            lines.append(f"{'#' * min(int(level) + 1, 6)} {text}")  # Title is level 1, so Heading 1 is ##
        else:
            lines.append(text)
    for table in document.tables:
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    title = (document.core_properties.title or "").strip()
    return "\n\n".join(lines), ({"title": title} if title else {})


def _cell(value: str) -> Any:
    """A CSV cell as metadata: whole numbers and decimals as numbers (so `page=3` and `year={gte: 2020}` filter
    them), anything else as the string."""
    if re.fullmatch(r"-?\d{1,18}", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d+", value):
        return float(value)
    return value


def _table(path: Path, config: IngestConfig, report: IngestReport) -> list[Document]:
    """CSV/TSV rows as records: the `text_key` column is the passage (else every column as `name: value` lines),
    the `id_key` column its id (else FILE:ROW), the other columns metadata."""
    import csv

    text = _read_text(path)
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    try:
        rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    except csv.Error as e:
        raise _Skip(f"unreadable CSV: {e}") from None
    if not rows:
        raise _Skip("no rows (a header line and at least one row are needed)")
    docs = []
    for n, row in enumerate(rows, 2):  # line 1 is the header
        if None in row:
            report.skipped.append(Skipped(f"{path}:{n}", f"{len(row[None])} more fields than the header names"))
            continue
        values = {k: (v or "").strip() for k, v in row.items()}
        if config.text_key in values:
            body = values[config.text_key]
        else:
            body = "\n".join(f"{k}: {v}" for k, v in values.items() if v and k != config.id_key)
        if not body:
            report.skipped.append(Skipped(f"{path}:{n}", "empty text"))
            continue
        meta = {k: _cell(v) for k, v in values.items() if k not in (config.text_key, config.id_key)}
        doc_id = values.get(config.id_key) or f"{path}:{n}"
        docs.append(Document(str(path), body, doc_id, None, "text", meta, sha256_text(body)))
    return docs


def _image(path: Path) -> Document:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError as e:  # a tiny file that would decode to gigabytes: refuse the build
        raise DataError(f"{path}: {e}; valid: images of at most {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise _Skip(f"unreadable image: {e}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Document(str(path), "", str(path), None, "image", {}, digest)


def read_file(path: Path, config: IngestConfig, report: IngestReport) -> list[Document]:
    """The Documents of one file; raises _Skip with the reason when it yields none."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise _Skip(f"unsupported file type {suffix or '(no extension)'}; supported: {', '.join(SUPPORTED)}")
    if suffix in IMAGE_SUFFIXES:
        if not config.images:
            raise _Skip("images disabled (ingest.images: false)")
        return [_image(path)]
    if suffix == ".pdf":
        return [Document(str(path), text, str(path), page, "text", {}, sha256_text(text)) for page, text in _pdf_pages(path)]
    if suffix in RECORD_SUFFIXES:
        return _records(path, config, report)
    if suffix in TABLE_SUFFIXES:
        return _table(path, config, report)
    if suffix in HTML_SUFFIXES:
        text, meta = _html(path)
    elif suffix == ".docx":
        text, meta = _docx(path)
    else:
        text, meta = _read_text(path).strip(), {}
    if not text:
        raise _Skip("empty (no text)")
    return [Document(str(path), text, str(path), None, "text", meta, sha256_text(text))]


def ingest(paths: Iterable[str | os.PathLike], config: IngestConfig | None = None) -> IngestReport:
    """Read every supported file under `paths` into Documents; duplicates of earlier content are skipped."""
    config = config or IngestConfig()
    report = IngestReport()
    seen: dict[str, str] = {}  # content hash -> first source
    # tqdm decides: a bar on a terminal, nothing in logs or tests
    for path in tqdm(iter_files(paths, config.follow_symlinks), desc="ingest", unit=" files", disable=None):
        try:
            if not path.exists():
                raise _Skip("no such file or directory")
            if path.is_symlink() and not config.follow_symlinks:
                raise _Skip("symbolic link (set ingest.follow_symlinks: true to follow)")
            if not path.is_file():
                raise _Skip("not a regular file")
            size = path.stat().st_size
            if size == 0:
                raise _Skip("empty (0 bytes)")
            if size > config.max_file_mb * 1e6:
                raise _Skip(f"{size / 1e6:.0f} MB is over ingest.max_file_mb={config.max_file_mb:g}")
            docs = read_file(path, config, report)
        except _Skip as e:
            report.skipped.append(Skipped(str(path), str(e)))
            continue
        except OSError as e:
            report.skipped.append(Skipped(str(path), f"unreadable: {e.strerror or e}"))
            continue
        report.files_read += 1
        for doc in docs:
            first = seen.get(doc.content_hash)
            if first is not None:
                where = f"{doc.source} page {doc.page}" if doc.page else doc.doc_id
                report.skipped.append(Skipped(where, f"duplicate content of {first}"))
                continue
            seen[doc.content_hash] = f"{doc.source} page {doc.page}" if doc.page else doc.doc_id
            report.documents.append(doc)
    logger.info("ingested %d documents from %d files (%d skipped)", len(report.documents), report.files_read, len(report.skipped))
    return report
