"""What only the Milvus backend has: generations inside one collection (a reader never sees a write that has not
committed; a killed writer's rows are undone by the next write), re-embedding into a new collection (a new
width too), milvus-lite's one-process lock named in the error, and its configuration (uri, collection, CLI flags).
The semantics both backends share run on both in test_store.py, test_retrieve.py, test_rag_cli.py and the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rag_helpers import has_milvus

from mmadapt.config import from_dict
from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.chunk import Chunk, sha256_text
from mmadapt.rag.store import RagConfig, RagIndex

pytestmark = pytest.mark.skipif(not has_milvus(), reason="needs pymilvus + milvus-lite")


def passages(ids: range, dim: int = 384, seed: int = 0) -> tuple[list[Chunk], np.ndarray]:
    chunks = [Chunk(f"m{i}#0", f"milvus passage {i}", "m.txt", f"m{i}", None, 0, 0, "text", {"n": i},
                    sha256_text(f"milvus passage {i}"), sha256_text(f"mdoc {i}")) for i in ids]
    vectors = np.random.default_rng(seed).standard_normal((len(chunks), dim)).astype(np.float32)
    return chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class OnesEmbedder:
    """An 8-dimensional embedder giving every text the same vector (another width than MiniLM's 384)."""

    dim, max_tokens, modalities = 8, 64, ("text",)
    identity = {"type": "sentence-transformers", "name": "ones", "dim": 8}

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 8), dtype=np.float32)

    embed_queries = embed_documents


def milvus_index(path, embedder, **index: object) -> RagIndex:
    return RagIndex.create(path, from_dict(RagConfig, {"index": {"backend": "milvus", **index}}), embedder=embedder)


def rows_in_collection(index: RagIndex) -> int:
    """Every row Milvus holds for the index, whatever generation added or deleted it."""
    return index.vectors.client.query(index.vectors.collection, filter="", output_fields=["count(*)"])[0]["count(*)"]


def top1(index: RagIndex, vectors: np.ndarray) -> list[str | None]:
    return [hits[0].chunk_id if hits else None for hits in index.search(vectors, k=1)]


def test_a_reader_keeps_its_generation_while_a_writer_commits(tmp_path, minilm):
    writer = milvus_index(tmp_path / "idx", minilm)
    chunks, vectors = passages(range(12))
    writer.add_chunks(chunks[:8], vectors[:8])
    reader = RagIndex.open(writer.path)
    reader.auto_reload = False  # pinned to the generation it opened
    writer.add_chunks(chunks[8:], vectors[8:])
    assert top1(reader, vectors[8:]) != [c.chunk_id for c in chunks[8:]]  # rows of a later generation stay invisible
    assert all(h.chunk_id not in {c.chunk_id for c in chunks[8:]} for hits in reader.search(vectors[8:], k=8) for h in hits)
    assert reader.reload() and top1(reader, vectors[8:]) == [c.chunk_id for c in chunks[8:]]
    assert rows_in_collection(writer) == 12


def test_an_uncommitted_write_is_invisible_and_undone_by_the_next_write(tmp_path, minilm):
    index = milvus_index(tmp_path / "idx", minilm)
    chunks, vectors = passages(range(10))
    index.add_chunks(chunks, vectors)
    assert rows_in_collection(index) == 10
    # A writer that dies after touching Milvus and before the manifest commit: it added rows under the next
    # generation and marked three rows deleted by it.
    orphan_chunks, orphan_vectors = passages(range(100, 105), seed=1)
    index.vectors.begin(index.store["generation"] + 1)
    index.vectors.add(orphan_vectors, np.arange(1000, 1005))
    index.vectors.remove(np.array([1, 2, 3]))
    index.vectors.save(index.gen_dir)  # flushed: durable in Milvus, yet the manifest never named it
    reader = RagIndex.open(index.path)
    assert top1(reader, vectors) == [c.chunk_id for c in chunks]  # the committed state, nothing of the killed write
    assert reader.search(orphan_vectors, k=10)[0][0].chunk_id in {c.chunk_id for c in chunks}
    assert rows_in_collection(reader) == 15
    reader.add_chunks(*passages(range(20, 22), seed=2))  # the next write first undoes the killed one
    assert rows_in_collection(reader) == 12 and len(reader) == 12
    assert top1(RagIndex.open(index.path), vectors) == [c.chunk_id for c in chunks]


def test_deleted_rows_leave_milvus_once_committed(tmp_path, minilm):
    index = milvus_index(tmp_path / "idx", minilm, kind="hnsw")
    chunks, vectors = passages(range(20))
    index.add_chunks(chunks, vectors)
    assert index.delete(chunk_ids=[c.chunk_id for c in chunks[:5]]) == 5
    assert rows_in_collection(index) == 15 and index.stats()["tombstones"] == 0  # deleted for real, no tombstones
    assert not {c.chunk_id for c in chunks[:5]} & set(top1(index, vectors[:5]))


def test_reembedding_fills_a_new_collection_at_a_new_width_and_drops_the_old(tmp_path, minilm):
    index = milvus_index(tmp_path / "idx", minilm)
    index.add_chunks(*passages(range(6)))
    old = index.vectors.collection
    index.reembed(OnesEmbedder())
    assert index.dim == 8 and index.vectors.collection == f"{old}__r{index.store['generation']}"
    assert old not in index.vectors.client.list_collections()
    reopened = RagIndex.open(index.path, embedder=OnesEmbedder())
    hits = reopened.search(np.ones((1, 8), dtype=np.float32), k=6)[0]
    assert len(hits) == 6 and hits[0].score == pytest.approx(8.0)
    assert reopened.stats()["vectors"] == 6


def test_milvus_lite_names_its_one_process_lock(tmp_path, minilm):
    index = milvus_index(tmp_path / "idx", minilm)  # this process holds milvus-lite's lock on idx/milvus.db
    code = f"from mmadapt.rag.store import RagIndex; RagIndex.open({str(index.path)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "milvus-lite lets one process at a time open it" in out.stderr and "index.uri: http://HOST:19530" in out.stderr
    index.close(release=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_uri_and_collection_are_configurable_and_checked(tmp_path, minilm, monkeypatch):
    shared = tmp_path / "shared.db"  # one milvus-lite database outside the index, holding a named collection
    monkeypatch.chdir(tmp_path)
    index = milvus_index(tmp_path / "idx", minilm, uri="shared.db", collection="manuals")  # relative to the cwd
    assert json.loads((index.path / "manifest.json").read_text())["config"]["index"]["uri"] == str(shared)
    index.add_chunks(*passages(range(3)))
    assert shared.is_dir() and not (index.path / "milvus.db").exists()
    assert index.store["milvus"]["collection"] == "manuals" and len(RagIndex.open(index.path)) == 3
    with pytest.raises(DataError, match="index.collection 'manuals' already exists in Milvus at .*shared.db"):
        milvus_index(tmp_path / "other", minilm, uri=str(shared), collection="manuals")
    with pytest.raises(ConfigError, match="index.collection '9lives'"):
        milvus_index(tmp_path / "bad1", minilm, collection="9lives")
    with pytest.raises(ConfigError, match="index.uri 'milvus.sqlite': a Milvus server"):
        milvus_index(tmp_path / "bad2", minilm, uri="milvus.sqlite")
    with pytest.raises(ConfigError, match="index.uri and index.collection apply to index.backend: milvus"):
        from_dict(RagConfig, {"index": {"uri": "x.db"}})


def test_cli_builds_on_milvus_and_info_says_so(tmp_path, capsys, monkeypatch):
    from mmadapt.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"note {i} on harbour tides"}) + "\n"
                                                 for i in range(4)))
    assert main(["rag", "build", "docs.jsonl", "--out", "idx", "--backend", "milvus", "--collection", "tides"]) == 0
    capsys.readouterr()
    assert main(["rag", "info", "idx"]) == 0
    stats = json.loads(capsys.readouterr().out.split("\n}")[0] + "\n}")
    assert stats["backend"] == "milvus" and stats["chunks"] == 4
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["config"]["index"]["backend"] == "milvus" and manifest["store"]["milvus"]["collection"] == "tides"
    example = Path(__file__).resolve().parents[2] / "examples" / "rag_build_milvus.yaml"
    assert main(["rag", "build", "docs.jsonl", "--out", "from_example", "--config", str(example)]) == 0
    capsys.readouterr()
    assert main(["rag", "query", "from_example", "harbour tides", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    stored = json.loads((tmp_path / "from_example" / "manifest.json").read_text())["store"]
    assert (stored["backend"], stored["index_kind"]) == ("milvus", "hnsw")


def test_overwrite_replaces_the_index_and_drops_the_collections_it_kept_outside(tmp_path, minilm, topic_corpus):
    shared = str(tmp_path / "shared.db")

    def build(collection: str, documents, uri: str | None = shared) -> RagIndex:
        index = {"backend": "milvus", "collection": collection, **({"uri": uri} if uri else {})}
        return RagIndex.build(tmp_path / "idx", documents, from_dict(RagConfig, {"index": index}), embedder=minilm,
                              overwrite=True)[0]

    first = build("manuals", topic_corpus.documents[:3])
    first.reembed(minilm)  # now in manuals__r3
    second = build("manuals_v2", topic_corpus.documents[3:])
    assert len(second) == 5 and sorted(second.vectors.client.list_collections()) == ["manuals_v2"]
    inside = build("local", topic_corpus.documents[:2], uri=None)  # lite inside the index directory this time
    assert len(inside) == 2 and (inside.path / "milvus.db").is_dir()
    again = build("local", topic_corpus.documents[:4], uri=None)  # the same name: the old directory went with it
    assert len(again) == 4 and again.search(minilm.embed_queries([topic_corpus.queries[3]]), k=1)[0][0].doc_id == "doc-3"


def test_info_verify_finds_vectors_missing_from_milvus(tmp_path, minilm, capsys):
    from mmadapt.cli import main

    index = milvus_index(tmp_path / "idx", minilm)
    index.add_chunks(*passages(range(5)))
    assert index.check_vectors() == []
    index.vectors.client.delete(index.vectors.collection, ids=[1, 2])  # someone else's hands on the collection
    assert main(["rag", "info", str(index.path), "--verify"]) == 1
    assert "the milvus vectors hold 3 entries for 5 passages" in capsys.readouterr().out


@pytest.mark.parametrize("max_limit", [4, 20, 16_384])
def test_filters_give_the_exact_filtered_top_k_whether_pushed_down_or_applied_after(tmp_path, minilm, monkeypatch,
                                                                                    max_limit):
    """Up to MAX_LIMIT allowed ids go to Milvus as a list; more are applied to a deeper result, and a query that
    comes back short is scored exactly: either way the answer is the exact top k among the allowed passages."""
    from mmadapt.rag.backends import milvus

    monkeypatch.setattr(milvus, "MAX_LIMIT", max_limit)
    index = milvus_index(tmp_path / "idx", minilm, kind="hnsw", exact_filter_max=0)  # never the store's exact path
    chunks, vectors = passages(range(60))
    index.add_chunks(chunks, vectors)
    queries = passages(range(200, 206), seed=5)[1]
    for filters in ({"n": {"gte": 30}}, {"n": {"lt": 6}}, {"n": [7, 41, 58]}):
        allowed = [i for i, c in enumerate(chunks) if eval_filter(c.metadata["n"], filters["n"])]
        expected = [[chunks[j].chunk_id for j in np.array(allowed)[np.argsort(-(vectors[allowed] @ q))][:5]] for q in queries]
        got = [[h.chunk_id for h in hits] for hits in index.search(queries, k=5, filters=filters)]
        assert got == expected, filters


def eval_filter(n: int, condition: object) -> bool:
    if isinstance(condition, list):
        return n in condition
    return all({"gte": n >= v, "lt": n < v}[op] for op, v in condition.items())
