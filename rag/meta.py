"""The SQLite half of an index: passages, their metadata and vectors, an FTS5 (BM25) table, and filters.

The row id of a passage is its faiss id (AUTOINCREMENT: ids are never reused, so an HNSW tombstone
can never hide a newer passage). Vectors are kept here as well as in faiss: they are the source of
truth the faiss index can always be rebuilt from (HNSW compaction, IVF-PQ retraining, a kind chosen
by size changing as the index grows) and give exact scores for filtered and re-ranked searches.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from mmadapt.errors import ConfigError
from mmadapt.rag.chunk import Chunk

COLUMNS = ("chunk_id", "source", "doc_id", "page", "start", "end", "modality", "text", "metadata", "content_hash", "doc_hash")
FILTER_COLUMNS = {"chunk_id", "source", "doc_id", "page", "modality"}
NAMESPACE = "mmadapt."  # filter keys naming mmadapt's own columns, never a passage's metadata
_OPS = {"eq": "=", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

SCHEMA = """
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    page INTEGER,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    modality TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    doc_hash TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX chunks_source ON chunks(source);
CREATE INDEX chunks_doc ON chunks(doc_id);
CREATE INDEX chunks_content ON chunks(content_hash);
CREATE INDEX chunks_doc_hash ON chunks(doc_hash);
CREATE TABLE tombstones (id INTEGER PRIMARY KEY);
"""

FTS_SCHEMA = """
CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""


@dataclass
class Hit:
    """One retrieved passage with its score (higher is better) and where it came from."""

    chunk_id: str
    score: float
    text: str
    source: str
    doc_id: str
    page: int | None = None
    start: int = 0
    end: int = 0
    modality: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)
    row: int = -1

    def citation(self) -> str:
        """`source, page N` (the part of a citation that says where the passage is)."""
        return f"{self.source}, page {self.page}" if self.page else self.source


def fts5_available() -> bool:
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        return True
    except sqlite3.OperationalError:
        return False


def create_schema(conn: sqlite3.Connection, lexical: bool) -> None:
    conn.executescript(SCHEMA)
    if lexical:
        conn.executescript(FTS_SCHEMA)


def connect_readonly(path: str) -> sqlite3.Connection:
    """A committed generation's file never changes again: open it immutable (no locks, no journal)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def insert(conn: sqlite3.Connection, chunks: list[Chunk], vectors: np.ndarray) -> np.ndarray:
    """Insert passages with their vectors; returns their new row ids (their faiss ids)."""
    ids = []
    for chunk, vector in zip(chunks, vectors):
        cur = conn.execute(
            'INSERT INTO chunks (chunk_id, source, doc_id, page, start, "end", modality, text, metadata, content_hash, '
            "doc_hash, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (chunk.chunk_id, chunk.source, chunk.doc_id, chunk.page, chunk.start, chunk.end, chunk.modality, chunk.text,
             json.dumps(chunk.metadata, sort_keys=True, default=str), chunk.content_hash, chunk.doc_hash, to_blob(vector)),
        )
        ids.append(cur.lastrowid)
    return np.asarray(ids, dtype=np.int64)


def _select_ids(conn: sqlite3.Connection, column: str, values: Iterable[str]) -> list[int]:
    values = list(values)
    out: list[int] = []
    for i in range(0, len(values), 500):  # stay under SQLite's bound-parameter limit
        part = values[i : i + 500]
        marks = ",".join("?" * len(part))
        out += [r[0] for r in conn.execute(f"SELECT id FROM chunks WHERE {column} IN ({marks})", part)]
    return out


def ids_for(conn: sqlite3.Connection, chunk_ids: Iterable[str] = (), sources: Iterable[str] = (), doc_ids: Iterable[str] = ()) -> np.ndarray:
    rows = set(_select_ids(conn, "chunk_id", chunk_ids)) | set(_select_ids(conn, "source", sources)) | set(_select_ids(conn, "doc_id", doc_ids))
    return np.asarray(sorted(rows), dtype=np.int64)


def delete(conn: sqlite3.Connection, ids: np.ndarray, tombstone: bool) -> None:
    """Delete rows; with `tombstone`, remember their ids (their vectors stay in an HNSW graph until compaction)."""
    for i in range(0, len(ids), 500):
        part = [int(x) for x in ids[i : i + 500]]
        marks = ",".join("?" * len(part))
        conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)
        if tombstone:
            conn.executemany("INSERT OR IGNORE INTO tombstones (id) VALUES (?)", [(x,) for x in part])


def rows_of_docs(conn: sqlite3.Connection, doc_ids: list[str]) -> dict[str, sqlite3.Row]:
    """{chunk_id: row (every column, vector included)} of the passages of the given documents."""
    out = {}
    for i in range(0, len(doc_ids), 500):
        part = doc_ids[i : i + 500]
        for r in conn.execute(f"SELECT * FROM chunks WHERE doc_id IN ({','.join('?' * len(part))})", part):
            out[r["chunk_id"]] = r
    return out


def same_passage(row: sqlite3.Row, chunk: Chunk) -> bool:
    """Whether a stored passage already is `chunk` (text, place, metadata and document hash alike)."""
    return (row["content_hash"], row["source"], row["page"], row["start"], row["end"], row["modality"], row["doc_hash"],
            row["metadata"]) == (chunk.content_hash, chunk.source, chunk.page, chunk.start, chunk.end, chunk.modality,
                                 chunk.doc_hash, json.dumps(chunk.metadata, sort_keys=True, default=str))


def tombstones(conn: sqlite3.Connection) -> np.ndarray:
    return np.asarray([r[0] for r in conn.execute("SELECT id FROM tombstones ORDER BY id")], dtype=np.int64)


def existing_hashes(conn: sqlite3.Connection, column: str, hashes: Iterable[str]) -> dict[str, str]:
    """{hash: a source that already holds it} for the given content or document hashes."""
    hashes = sorted(set(hashes))
    found: dict[str, str] = {}
    for i in range(0, len(hashes), 500):
        part = hashes[i : i + 500]
        marks = ",".join("?" * len(part))
        for h, src in conn.execute(f"SELECT {column}, MIN(source) FROM chunks WHERE {column} IN ({marks}) GROUP BY {column}", part):
            found[h] = src
    return found


def all_vectors(conn: sqlite3.Connection, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every live (ids [n], vectors [n, dim])."""
    rows = conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
    return _unpack(rows, dim)


def vectors_for(conn: sqlite3.Connection, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    wanted = [int(x) for x in ids if x >= 0]
    for i in range(0, len(wanted), 500):
        part = wanted[i : i + 500]
        marks = ",".join("?" * len(part))
        rows += conn.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", part).fetchall()
    return _unpack(rows, dim)


def _unpack(rows: list[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    if not rows:
        return ids, np.zeros((0, dim), dtype=np.float32)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)  # [n, dim]
    return ids, vectors


def hits_for(conn: sqlite3.Connection, ids: list[int], scores: list[float]) -> list[Hit]:
    """Hits for row ids in the given order; ids no longer present (deleted) are dropped."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = {r["id"]: r for r in conn.execute(
        f'SELECT id, chunk_id, source, doc_id, page, start, "end", modality, text, metadata FROM chunks WHERE id IN ({marks})',
        [int(i) for i in ids])}
    out = []
    for i, score in zip(ids, scores):
        r = rows.get(int(i))
        if r is not None:
            out.append(Hit(r["chunk_id"], float(score), r["text"], r["source"], r["doc_id"], r["page"], r["start"], r["end"],
                           r["modality"], json.loads(r["metadata"]), int(i)))
    return out


_KEY = re.compile(r"^[A-Za-z0-9_\-.]+$")


def filter_sql(filters: dict[str, Any] | None, table: str = "chunks") -> tuple[str, list[Any]]:
    """Metadata filters -> (SQL condition, parameters).

    `{key: value}` is equality, `{key: [a, b]}` membership, `{key: {gte: 3, lt: 9}}` comparisons
    (eq ne lt lte gt gte in prefix). A key names a field of the passage's own metadata (a record's
    `source`, `page`, `doc_id`, ... included); `source`, `doc_id`, `chunk_id`, `page` and `modality` fall back to
    mmadapt's column of that name for passages without such a field, and `mmadapt.source` (etc.) always
    reads mmadapt's column.
    """
    if not filters:
        return "1", []
    clauses, params = [], []
    for key, cond in filters.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(f"filter key {key!r}: use letters, digits, '_', '-' or '.'")
        own = key.removeprefix(NAMESPACE)
        if key.startswith(NAMESPACE):
            if own not in FILTER_COLUMNS:
                raise ConfigError(f"filter {key!r}: mmadapt's own fields are {', '.join(NAMESPACE + c for c in sorted(FILTER_COLUMNS))}")
            expr, key_params = f"{table}.{own}", []
        elif key in FILTER_COLUMNS:  # the passage's own field of that name if it has one, else mmadapt's column
            expr, key_params = f"COALESCE(json_extract({table}.metadata, ?), {table}.{key})", [f'$."{key}"']
        else:  # the JSON path is bound too, never spliced into SQL
            expr, key_params = f"json_extract({table}.metadata, ?)", [f'$."{key}"']
        ops = cond if isinstance(cond, dict) else ({"in": cond} if isinstance(cond, list) else {"eq": cond})
        for op, value in ops.items():
            if op in _OPS:
                clauses.append(f"{expr} {_OPS[op]} ?")
                params += key_params + [_sql_value(value, key)]
            elif op == "in":
                if not isinstance(value, list) or not value:
                    raise ConfigError(f"filter {key}: 'in' needs a non-empty list, got {value!r}")
                clauses.append(f"{expr} IN ({','.join('?' * len(value))})")
                params += key_params + [_sql_value(v, key) for v in value]
            elif op == "prefix":
                if not isinstance(value, str):
                    raise ConfigError(f"filter {key}: 'prefix' needs a string, got {value!r}")
                escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                clauses.append(f"{expr} LIKE ? ESCAPE '\\'")
                params += key_params + [escaped + "%"]
            else:
                raise ConfigError(f"filter {key}: unknown operator {op!r}; valid: {', '.join([*_OPS, 'in', 'prefix'])}")
    return " AND ".join(clauses), params


def _sql_value(value: Any, key: str) -> Any:
    if isinstance(value, bool):
        return int(value)  # json_extract returns JSON true/false as 1/0
    if value is None or isinstance(value, (int, float, str)):
        return value
    raise ConfigError(f"filter {key}: {value!r} is not a string, number or boolean")


def filtered_ids(conn: sqlite3.Connection, filters: dict[str, Any]) -> np.ndarray:
    where, params = filter_sql(filters)
    return np.asarray([r[0] for r in conn.execute(f"SELECT id FROM chunks WHERE {where}", params)], dtype=np.int64)


def fts_query(text: str) -> str:
    """A user's words as an FTS5 OR-query of quoted terms (FTS5 syntax characters in queries are never interpreted)."""
    terms = re.findall(r"\w+", text.lower())
    return " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))


def lexical(conn: sqlite3.Connection, query: str, k: int, filters: dict[str, Any] | None = None) -> tuple[list[int], list[float]]:
    """BM25 top-k (row ids, scores: higher is better) through the FTS5 table."""
    match = fts_query(query)
    if not match:
        return [], []
    where, params = filter_sql(filters)
    rows = conn.execute(
        f"SELECT chunks.id, bm25(chunks_fts) AS b FROM chunks_fts JOIN chunks ON chunks.id = chunks_fts.rowid "
        f"WHERE chunks_fts MATCH ? AND {where} ORDER BY b LIMIT ?",
        [match, *params, k],
    ).fetchall()
    return [r[0] for r in rows], [-float(r[1]) for r in rows]  # FTS5's bm25() is lower-is-better


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    row = conn.execute("SELECT COUNT(*), COUNT(DISTINCT doc_id), COUNT(DISTINCT source) FROM chunks").fetchone()
    dead = conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]
    return {"chunks": row[0], "documents": row[1], "sources": row[2], "tombstones": dead}
