"""The persistent index on each vector backend (faiss, Milvus): manifest and checksums, kinds and metrics,
incremental add / delete / update, de-duplication, embedder and format checks, images, and concurrent writers.
Crash safety: test_store_crash.py; Milvus's own generations and recovery: test_milvus.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.chunk import Chunk, Document, sha256_text
from mmadapt.rag.store import FORMAT_VERSION, RagConfig, RagIndex


def random_chunks(ids: range, dim: int = 384, source: str = "random.txt", seed: int = 0) -> tuple[list[Chunk], np.ndarray]:
    """Passages `r{i}#0` with unit random vectors [n, dim] (no embedding cost)."""
    chunks = [Chunk(f"r{i}#0", f"passage number {i}", source, f"r{i}", None, 0, 0, "text", {"n": i},
                    sha256_text(f"passage number {i}"), sha256_text(f"doc {i}")) for i in ids]
    vectors = np.random.default_rng(seed).standard_normal((len(chunks), dim)).astype(np.float32)
    return chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def empty_index(path: Path, minilm, **index: object) -> RagIndex:
    from mmadapt.config import from_dict

    return RagIndex.create(path, from_dict(RagConfig, {"index": index}), embedder=minilm)


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_build_records_format_embedder_metric_counts_and_checksums(minilm_index_dir, minilm, topic_corpus):
    from mmadapt.io import sha256_file
    from mmadapt.lineage import verify
    from mmadapt.rag.embed import default_model_path

    m = manifest(minilm_index_dir)
    store = m["store"]
    faiss = store["backend"] == "faiss"
    assert m["kind"] == "rag_index" and store["format_version"] == FORMAT_VERSION
    assert store["embedder"] == minilm.identity and store["metric"] == "ip"
    assert store["index_kind"] == ("flat" if faiss else "auto")  # faiss chooses by size; Milvus's AUTOINDEX
    assert store["counts"] == {"chunks": 8, "documents": 8, "sources": 8, "tombstones": 0, "vectors": 8}
    gen = f"gen-{store['generation']:06d}"
    own = [gen, "manifest.json"] if faiss else [gen, "manifest.json", "milvus.db"]  # milvus-lite's directory
    assert sorted(p.name for p in minilm_index_dir.iterdir() if not p.name.startswith(".")) == own
    files = ("index.faiss", "meta.sqlite") if faiss else ("meta.sqlite",)
    assert m["files"] == {f"{gen}/{n}": sha256_file(minilm_index_dir / gen / n) for n in files}
    assert m["parents"][0]["path"] == str(default_model_path())  # the embedder's weights are part of the lineage
    assert m["config"]["embedder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert verify(minilm_index_dir) == []
    index = RagIndex.open(minilm_index_dir)
    assert len(index) == 8 and index.dim == 384
    assert index.chunk_ids() == topic_corpus.chunk_ids
    (hit,) = index.get(["doc-4#0"])
    doc = topic_corpus.documents[4]
    assert (hit.text, hit.source, hit.doc_id, hit.start, hit.end, hit.metadata) == (
        doc.text, doc.source, "doc-4", 0, len(doc.text), {"topic": "medicine", "year": 2004})


def test_search_finds_passages_by_meaning_and_honours_filters(minilm_index_dir, minilm, topic_corpus):
    index = RagIndex.open(minilm_index_dir, embedder=minilm)
    hits = index.search(minilm.embed_queries(topic_corpus.queries), k=3)
    assert [h[0].chunk_id for h in hits] == topic_corpus.chunk_ids
    assert all(h[0].score > h[1].score >= h[2].score for h in hits)
    query = minilm.embed_queries(["which planet is the biggest"])
    later = index.search(query, k=8, filters={"year": {"gte": 2005}})[0]
    assert sorted(h.metadata["year"] for h in later) == [2005, 2006, 2007]
    assert [h.chunk_id for h in index.search(query, k=2, filters={"topic": ["music", "astronomy"]})[0]] == ["doc-1#0", "doc-6#0"]
    assert index.search(query, k=3, filters={"source": {"prefix": "nowhere/"}}) == [[]]
    assert len(index.search(query, k=50)[0]) == 8  # k beyond the index size returns what there is
    with pytest.raises(DataError, match="query vectors have dimension 5, the index holds 384"):
        index.search(np.zeros((1, 5), dtype=np.float32))
    with pytest.raises(ConfigError, match="unknown operator 'like'"):
        index.search(query, filters={"topic": {"like": "x"}})


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_every_kind_and_metric_finds_stored_vectors(tmp_path, minilm, kind, metric, backend):
    index = empty_index(tmp_path / "idx", minilm, backend=backend, kind=kind, metric=metric, pq_m=16, pq_bits=6)
    chunks, vectors = random_chunks(range(300))
    assert index.add_chunks(chunks, vectors).added == 300
    assert manifest(index.path)["store"]["index_kind"] == kind and manifest(index.path)["store"]["metric"] == metric
    reopened = RagIndex.open(index.path)
    hits = reopened.search(vectors[:40], k=3)
    found = np.mean([h[0].chunk_id == chunks[i].chunk_id for i, h in enumerate(hits)])
    assert found == 1.0 if kind != "ivfpq" else found >= 0.9  # IVF-PQ re-scores its candidates with exact vectors
    best = hits[0][0].score
    assert best == pytest.approx(1.0 if metric == "ip" else 0.0, abs=1e-4)  # scores: higher is better
    gone = {c.chunk_id for c in chunks[:10]}
    assert reopened.delete(chunk_ids=sorted(gone)) == 10 and len(reopened) == 290
    assert not gone & {h.chunk_id for hits in reopened.search(vectors[:10], k=5) for h in hits}
    assert reopened.stats()["kind"] == kind


def test_kind_follows_size_when_auto_and_ivfpq_waits_for_enough_training_data(tmp_path, minilm):
    index = empty_index(tmp_path / "auto", minilm, auto_flat_max=50, auto_hnsw_max=150, pq_m=16, pq_bits=6)
    kinds = []
    for batch in (range(0, 40), range(40, 120), range(120, 300)):
        index.add_chunks(*random_chunks(batch, seed=batch.start))
        kinds.append(manifest(index.path)["store"]["index_kind"])
    assert kinds == ["flat", "hnsw", "ivfpq"]
    assert manifest(index.path)["store"]["trained_on"] == 300
    ivf = empty_index(tmp_path / "ivf", minilm, kind="ivfpq", pq_m=16, pq_bits=6)
    ivf.add_chunks(*random_chunks(range(10)))
    assert ivf.stats()["kind"] == "flat"  # 10 vectors cannot train 64-centroid codebooks: exact until they can
    ivf.add_chunks(*random_chunks(range(10, 100), seed=1))
    assert ivf.stats()["kind"] == "ivfpq" and len(ivf) == 100
    with pytest.raises(ConfigError, match="index.pq_m=7 must divide the embedding dimension 384"):
        empty_index(tmp_path / "bad", minilm, kind="ivfpq", pq_m=7)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_delete_by_id_source_and_document_then_update(tmp_path, minilm, kind, backend):
    index = empty_index(tmp_path / "idx", minilm, backend=backend, kind=kind, compact_ratio=0.7)
    a, va = random_chunks(range(0, 10), source="a.txt")
    b, vb = random_chunks(range(10, 20), source="b.txt", seed=1)
    index.add_chunks(a + b, np.concatenate([va, vb]))
    assert index.delete(chunk_ids=["r3#0", "missing#0"]) == 1
    assert index.delete(doc_ids=["r4"]) == 1
    assert index.delete(sources=["b.txt"]) == 10
    assert index.delete(sources=["b.txt"]) == 0
    assert len(index) == 8 and set(index.chunk_ids()) == {f"r{i}#0" for i in (0, 1, 2, 5, 6, 7, 8, 9)}
    tombstones = index.stats()["tombstones"]
    assert tombstones == (12 if (kind, backend) == ("hnsw", "faiss") else 0)  # faiss HNSW masks what it cannot remove
    for i in (3, 4, 10, 15):  # deleted passages are never returned, however close the query
        vec = va[i] if i < 10 else vb[i - 10]
        assert all(h.chunk_id != f"r{i}#0" for h in RagIndex.open(index.path).search(vec[None], k=20)[0])
    index.delete(chunk_ids=["r0#0", "r1#0", "r2#0"])  # 15 of 20 deleted > compact_ratio 0.7: the graph is rebuilt
    assert index.stats()["tombstones"] == 0 and index.stats()["vectors"] == 5
    changed = Chunk("r5#0", "rewritten passage", "a.txt", "r5", None, 0, 0, "text", {"n": 55}, sha256_text("rewritten"), "h")
    new_vector = random_chunks(range(1), seed=9)[1]
    report = index.update([changed], new_vector)
    assert report.added == 1 and len(index) == 5
    (hit,) = index.search(new_vector, k=1)[0]
    assert (hit.chunk_id, hit.text, hit.metadata, hit.score) == ("r5#0", "rewritten passage", {"n": 55}, pytest.approx(1.0))
    rows = [h.row for h in index.get(index.chunk_ids())]
    assert max(rows) == 21  # row ids (faiss ids) are never reused, so a stale HNSW entry can never alias a new one


def test_add_skips_duplicates_and_replace_reindexes_a_changed_file(tmp_path, minilm, backend):
    from mmadapt.config import from_dict

    docs = [Document("notes/a.txt", "Harbour seals rest on the rocks at low tide.", "a", content_hash=sha256_text("A")),
            Document("notes/b.txt", "The ferry leaves the pier every hour.", "b", content_hash=sha256_text("B"))]
    config = from_dict(RagConfig, {"index": {"backend": backend}})
    index, report = RagIndex.build(tmp_path / "idx", docs, config, embedder=minilm)
    assert report.added == 2
    again = index.add_documents(docs)
    assert again.added == 0 and [r for _, r in again.skipped] == ["duplicate passage (already in notes/a.txt)",
                                                                  "duplicate passage (already in notes/b.txt)"]
    copy = Document("copy/a.txt", docs[0].text, "copy", content_hash=docs[0].content_hash)
    assert index.add_documents([copy]).skipped == [("copy#0", "same document content already indexed from notes/a.txt")]
    edited = Document("notes/a.txt", "Harbour seals now rest on the sandbank.", "a", content_hash=sha256_text("A2"))
    assert index.add_documents([edited], replace=True).added == 1
    assert [h.text for h in index.get(doc_ids=["a"])] == ["Harbour seals now rest on the sandbank."]
    assert len(index) == 2 and index.stats()["generation"] == 3  # created, built, replaced: no-op adds write nothing
    stale = index.add_chunks(*random_chunks(range(1), dim=384))
    assert stale.added == 1
    with pytest.raises(DataError, match=r"vectors have shape \(1, 8\), expected \(1, 384\)"):
        index.add_chunks(*random_chunks(range(1, 2), dim=8))


def test_chunks_longer_than_the_embedder_reads_are_warned_about(build_index, caplog):
    text = " ".join(f"word{i}" for i in range(400))
    with caplog.at_level("WARNING", logger="mmadapt.rag.store"):
        index = build_index([text], chunk={"size": 300, "overlap": 0})
    assert "chunk.size 300 is over the 254 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmadapt.rag.store"):
        default = build_index([text])
    assert caplog.text == "" and len(default) > len(index) >= 2


def test_lexical_search_forgets_deleted_passages(minilm_index_dir, tmp_path):
    copy = tmp_path / "idx"
    shutil.copytree(minilm_index_dir, copy)
    index = RagIndex.open(copy)
    assert [h.chunk_id for h in index.lexical("violin bow strings", k=2)] == ["doc-6#0"]
    index.delete(chunk_ids=["doc-6#0"])
    assert index.lexical("violin bow strings", k=2) == []
    assert [h.chunk_id for h in index.lexical("VOLCANO! lava? (ash)", k=1)] == ["doc-7#0"]  # FTS syntax is not parsed


def test_opening_checks_embedder_format_and_files(minilm_index_dir, tiny_clip, tmp_path):
    with pytest.raises(DataError, match=r"built with embedder sentence-transformers 'sentence-transformers/all-MiniLM-L6-v2' "
                                        r"\(dim 384\), but open_clip '.*' \(dim 32\)"):
        RagIndex.open(minilm_index_dir, embedder={"type": "open_clip", "name": tiny_clip.name})  # a config is loaded
    copy = tmp_path / "idx"
    shutil.copytree(minilm_index_dir, copy)
    original = manifest(copy)
    for version, hint in ((FORMAT_VERSION + 1, "upgrade mmadapt"), (0, "rebuild it"), ("1", "rebuild it")):
        m = json.loads(json.dumps(original))
        m["store"]["format_version"] = version
        (copy / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(DataError, match=f"index format version {version}, this mmadapt .* reads version {FORMAT_VERSION}; {hint}"):
            RagIndex.open(copy)
    (copy / "manifest.json").write_text(json.dumps({**original, "kind": "training_run"}))
    with pytest.raises(DataError, match="manifest kind is 'training_run', not a RAG index"):
        RagIndex.open(copy)
    (copy / "manifest.json").write_text("{truncated")
    with pytest.raises(DataError, match="unreadable manifest"):
        RagIndex.open(copy)
    (copy / "manifest.json").write_text(json.dumps(original))
    gen = copy / f"gen-{original['store']['generation']:06d}"
    if original["store"]["backend"] == "milvus":  # its vectors are not a file: a missing collection is what can break
        m = json.loads(json.dumps(original))
        m["store"]["milvus"]["collection"] = "mmadapt_gone"
        (copy / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(DataError, match="its Milvus collection 'mmadapt_gone' is missing at .*milvus.db; the index is damaged"):
            RagIndex.open(copy)
        (copy / "manifest.json").write_text(json.dumps(original))
    damaged = "index.faiss" if original["store"]["backend"] == "faiss" else "meta.sqlite"
    with open(gen / damaged, "ab") as f:
        f.write(b"junk")
    with pytest.raises(DataError, match=f"{damaged}: .* bytes, the manifest says .*; the index is damaged"):
        RagIndex.open(copy)
    (gen / damaged).write_bytes(b"\0" * original["store"]["sizes"][f"{gen.name}/{damaged}"])
    with pytest.raises(DataError, match=f"{gen}: unreadable .*; the index is damaged"):
        RagIndex.open(copy)
    shutil.rmtree(gen)
    with pytest.raises(DataError, match=f"generation {gen.name} named by the manifest is missing"):
        RagIndex.open(copy)
    with pytest.raises(DataError, match="not a RAG index"):
        RagIndex.open(tmp_path)
    with pytest.raises(DataError, match="exists; pass overwrite"):
        RagIndex.build(copy, [])
    with pytest.raises(DataError, match="exists and is not empty"):
        RagIndex.create(copy)


def test_images_and_text_share_one_index(tiny_clip, tmp_path):
    from mmadapt.rag.embed import load_embedder
    from mmadapt.rag.ingest import ingest

    clip = load_embedder({"type": "open_clip", "name": tiny_clip.name})
    folder = tmp_path / "media"
    folder.mkdir()
    for colour in tiny_clip.colours:
        tiny_clip.image(folder, colour, seed=7)
    (folder / "captions.jsonl").write_text("".join(json.dumps({"id": c, "text": c}) + "\n" for c in tiny_clip.colours))
    index, report = RagIndex.build(tmp_path / "idx", ingest([folder]).documents, embedder=clip)
    assert report.added == 8 and report.skipped == []
    assert RagIndex.open(index.path).stats()["embedder"] == clip.identity
    assert [p["path"] for p in manifest(index.path)["parents"]] == [tiny_clip.name.removeprefix("local-dir:")]
    for colour in tiny_clip.colours:
        hits = index.search(clip.embed_queries([colour]), k=1, filters={"modality": "image"})[0]
        assert hits[0].source.endswith(f"{colour}-7.png") and hits[0].modality == "image"
        query = clip.embed_images([tiny_clip.image(tmp_path, colour, seed=99)])
        assert index.search(query, k=1, filters={"modality": "text"})[0][0].text == colour
    text_only, skipped = RagIndex.build(tmp_path / "text", ingest([folder]).documents, embedder=load_embedder({}))
    assert skipped.added == 4 and len(skipped.skipped) == 4
    assert "needs an image embedder" in skipped.skipped[0][1]


def test_a_stale_writer_starts_from_the_latest_generation(tmp_path, minilm, backend):
    first = empty_index(tmp_path / "idx", minilm, backend=backend)
    second = RagIndex.open(first.path)  # opened before `first` writes
    first.add_chunks(*random_chunks(range(0, 5)))
    assert len(second) == 0  # a reader keeps the generation it opened
    second.add_chunks(*random_chunks(range(5, 8), seed=1))
    assert len(second) == 8 and len(RagIndex.open(first.path)) == 8
    gens = [p.name for p in first.path.iterdir() if p.name.startswith(("gen-", ".gen-"))]
    assert gens == [f"gen-{manifest(first.path)['store']['generation']:06d}"]
