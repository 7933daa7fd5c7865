"""The write path of `RagIndex`: generations committed through the manifest (SQLite copied, the vector backend
begun, saved, committed), rebuilds, updates and re-embedding."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from mmadapt.config import to_dict
from mmadapt.io import atomic_directory
from mmadapt.lineage import describe_input
from mmadapt.rag import manifest as index_manifest
from mmadapt.rag import meta
from mmadapt.rag.chunk import Chunk, Document, chunk_documents, load_token_spans
from mmadapt.rag.embed import local_weights
from mmadapt.rag.manifest import MANIFEST, read_manifest

logger = logging.getLogger("mmadapt.rag.store")  # the store's logger: users filter on one name for the whole index

@dataclass
class AddReport:
    added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (chunk or document, reason)


@dataclass
class UpdateReport:
    changed: int = 0  # passages rewritten (re-embedded only when their text changed)
    unchanged: int = 0
    added: int = 0
    removed: int = 0  # passages of updated documents their new version no longer has
    embedded: int = 0  # passages embedded for this update



class IndexWrites:
    """Writes of an index directory; mixed into `RagIndex`, which holds the state used here (`self.vectors`: its
    VectorBackend)."""

    # ----------------------------------------------------------------------------- what gets written
    def embed_chunks(self, chunks: list[Chunk]) -> np.ndarray:
        """[n] chunks -> [n, dim]: text passages by the text tower, images by the image tower."""
        vectors = np.zeros((len(chunks), self.dim), dtype=np.float32)
        text = [i for i, c in enumerate(chunks) if c.modality == "text"]
        image = [i for i, c in enumerate(chunks) if c.modality == "image"]
        if text:
            vectors[text] = self.embedder.embed_documents([chunks[i].text for i in text])
        if image:
            vectors[image] = self.embedder.embed_images([chunks[i].source for i in image])
        return vectors

    def chunk(self, documents: list[Document]) -> list[Chunk]:
        cfg = self.config.chunk
        size = cfg.size or min(256, self.embedder.max_tokens)
        if size > self.embedder.max_tokens and cfg.tokenizer == "embedder":
            logger.warning("chunk.size %d is over the %d tokens embedder %s reads: the end of long passages is not "
                           "embedded", size, self.embedder.max_tokens, self.store["embedder"]["name"])
        return chunk_documents(documents, load_token_spans(cfg, self.embedder), size, min(cfg.overlap, size - 1),
                               cfg.strategy)

    # ----------------------------------------------------------------------------- writing
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Apply changes to a copy of the current generation and commit it as the next one."""
        with index_manifest.writer_lock(self.path):
            current = read_manifest(self.path)["store"]["generation"]
            if current != self.store["generation"]:
                self._close()
                self._load()  # another writer committed since we opened: start from its state
            existing = [int(p.name[4:]) for p in self.path.glob("gen-*") if p.name[4:].isdigit()]
            gen = max([current, *existing]) + 1
            final = self.path / f"gen-{gen:06d}"
            try:
                self.vectors.begin(gen)
                with atomic_directory(final) as tmp:
                    shutil.copyfile(self.gen_dir / "meta.sqlite", tmp / "meta.sqlite")
                    conn = sqlite3.connect(tmp / "meta.sqlite")
                    conn.execute("PRAGMA journal_mode=OFF")  # the whole file is a throwaway copy until committed
                    try:
                        yield conn
                        self._maybe_rebuild(conn)
                        self.store["counts"] = {**meta.counts(conn), "vectors": self.vectors.ntotal}
                        conn.commit()
                    finally:
                        conn.close()
                    self.vectors.save(tmp)
                    for name in ("meta.sqlite", *self.vectors.files):
                        index_manifest.fsync(tmp / name)
            except BaseException:
                self.vectors.abort()
                self._close()
                self._load()  # the in-memory index may hold half the change: back to the committed state
                raise
            self.store.update(generation=gen, **self.vectors.describe())
            index_manifest.write(self.path, self.final_path, self.manifest["config"], self.manifest["parents"], self.store,
                            final, ("meta.sqlite", *self.vectors.files), created=self.manifest.get("created"))
            try:
                self.vectors.committed()
            except Exception as e:  # committed all the same: the next write's `begin` finishes the clean-up
                logger.warning("%s: generation %d committed; cleaning up the previous one failed (%s), the next write "
                               "retries it", self.final_path, gen, e)
            self._close()
            self._load()
            for stale in self.path.iterdir():  # earlier generations and temp files left by killed writers
                if stale == final:
                    continue
                if stale.is_dir() and stale.name.startswith(("gen-", ".gen-")):
                    shutil.rmtree(stale, ignore_errors=True)
                elif stale.name.startswith(f".{MANIFEST}.") and stale.name.endswith(".tmp"):
                    stale.unlink(missing_ok=True)

    def _maybe_rebuild(self, conn: sqlite3.Connection) -> None:
        """Let the backend rebuild its search structure from the stored vectors (faiss: a kind changing with size,
        HNSW compaction, IVF-PQ retraining)."""
        live = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]
        reasons = self.vectors.maybe_rebuild(lambda: meta.all_vectors(conn, self.dim), live, dead)
        if reasons:
            logger.info("rebuilt the vector index: %s", "; ".join(reasons))
            conn.execute("DELETE FROM tombstones")

    def _dedup(self, conn: sqlite3.Connection, chunks: list[Chunk], report: AddReport) -> list[int]:
        """Indices of `chunks` to keep: documents and passages whose content is already indexed are skipped."""
        have_docs = meta.existing_hashes(conn, "doc_hash", {c.doc_hash for c in chunks})
        have_chunks = meta.existing_hashes(conn, "content_hash", {c.content_hash for c in chunks})
        keep, seen, seen_ids = [], set(), set()
        for i, c in enumerate(chunks):
            if c.doc_hash in have_docs and have_docs[c.doc_hash] != c.source:
                report.skipped.append((c.chunk_id, f"same document content already indexed from {have_docs[c.doc_hash]}"))
            elif c.content_hash in have_chunks or c.content_hash in seen:
                report.skipped.append((c.chunk_id, f"duplicate passage (already in {have_chunks.get(c.content_hash, 'this batch')})"))
            elif c.chunk_id in seen_ids or meta.ids_for(conn, chunk_ids=[c.chunk_id]).size:
                report.skipped.append((c.chunk_id, "chunk id already in the index (use update to replace it)"))
            else:
                keep.append(i)
                seen.add(c.content_hash)
                seen_ids.add(c.chunk_id)
        return keep

    def _delete_rows(self, conn: sqlite3.Connection, rows: np.ndarray) -> None:
        if len(rows):
            removed = self.vectors.remove(rows)
            meta.delete(conn, rows, tombstone=not removed)

    def update_documents(self, documents: list[Document]) -> UpdateReport:
        """Replace documents by id, embedding only what changed: a passage whose text changed is re-embedded, one
        whose metadata alone changed keeps its vector, an unchanged one is left alone, one the new version no
        longer has is removed; documents the index does not hold yet are added."""
        report = UpdateReport()
        chunks = self.chunk(documents)
        old = meta.rows_of_docs(self.conn, sorted({c.doc_id for c in chunks}))
        new_ids = {c.chunk_id for c in chunks}
        write, vectors, embed = [], [], []
        for c in chunks:
            row = old.get(c.chunk_id)
            if row is not None and meta.same_passage(row, c):
                report.unchanged += 1
                continue
            if row is not None and row["content_hash"] == c.content_hash:
                vectors.append(np.frombuffer(row["vector"], dtype=np.float32))
            else:
                vectors.append(None)
                embed.append(len(write))
            report.changed += row is not None
            report.added += row is None
            write.append(c)
        removed = [cid for cid in old if cid not in new_ids]
        report.removed, report.embedded = len(removed), len(embed)
        if not write and not removed:
            return report  # nothing changed: no generation is written
        fresh = self.embed_chunks([write[i] for i in embed])
        for j, i in enumerate(embed):
            vectors[i] = fresh[j]
        matrix = np.stack(vectors) if write else np.zeros((0, self.dim), dtype=np.float32)  # [n, dim]
        with self._transaction() as conn:
            self._delete_rows(conn, meta.ids_for(conn, chunk_ids=[c.chunk_id for c in write] + removed))
            self.vectors.add(matrix, meta.insert(conn, write, matrix))
        logger.info("updated %s: %s", self.final_path, report)
        return report

    def reembed(self, embedder: Any, batch: int = 4096) -> None:
        """Re-embed every passage with another embedder (e.g. one tuned on this corpus) as one new generation;
        readers keep the old generation until it commits. The embedder becomes the index's recorded one."""
        previous = self._embedder
        try:
            self._reembed(embedder, batch)
        except BaseException:
            self._embedder = previous  # the transaction rolled back to the committed generation and its embedder
            raise
        self._embedder_given = True

    def _reembed(self, embedder: Any, batch: int) -> None:
        from tqdm.auto import tqdm

        from mmadapt.rag.embed import EmbedderConfig

        with self._transaction() as conn:
            rows = conn.execute("SELECT id, chunk_id, text, source, modality FROM chunks ORDER BY id").fetchall()
            self._embedder, self.store["embedder"] = embedder, dict(embedder.identity)
            if isinstance(getattr(embedder, "config", None), EmbedderConfig):
                self.manifest["config"]["embedder"] = to_dict(embedder.config)
                self.manifest["parents"] = [describe_input(p) for p in local_weights(embedder.config)]
            for i in tqdm(range(0, len(rows), batch), desc="re-embed", disable=len(rows) <= batch):
                part = rows[i : i + batch]
                chunks = [Chunk(r[1], r[2], r[3], "", modality=r[4]) for r in part]
                vectors = self.embed_chunks(chunks)
                conn.executemany("UPDATE chunks SET vector = ? WHERE id = ?",
                                 [(meta.to_blob(v), r[0]) for v, r in zip(vectors, part)])
            ids, vectors = meta.all_vectors(conn, self.dim)
            self.vectors.rebuild(ids, vectors)
            conn.execute("DELETE FROM tombstones")
