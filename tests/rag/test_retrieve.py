"""Retrieval: dense top-k with scores and filters, BM25 + dense fused by reciprocal rank, cross-encoder re-ranking,
image queries, and the recall@k / MRR metrics."""

from __future__ import annotations

import pytest
from rag_helpers import BACKENDS, code_queries, corpus_documents, make_cross_encoder, topic_queries

from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.retrieve import (
    LEXICAL_CALIBRATION, MIN_LEXICAL_SCORE, RERANK_CALIBRATION, RetrieveConfig, Retriever, evaluate, recall_at_k,
    reciprocal_rank, reciprocal_rank_fusion, weighted_rank_fusion,
)


@pytest.fixture(scope="module", params=BACKENDS)
def index(build_index, request):
    """Five topic passages (found only by meaning) and six fault-code passages (told apart only by their code), on
    each vector backend."""
    return build_index(corpus_documents(), backend=request.param)


def retriever(index, **config):
    return Retriever(index, RetrieveConfig(**config))


def top1(results):
    return [hits[0].chunk_id if hits else None for hits in results]


def test_rrf_sums_reciprocal_ranks():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"], ["d"]], k=10)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 11 + 1 / 12)
    assert scores["c"] == pytest.approx(1 / 13 + 1 / 11)
    assert scores["b"] == pytest.approx(1 / 12)
    assert [key for key, _ in fused] == ["a", "c", "d", "b"]  # d, first in one ranking, beats b, second in one
    assert [key for key, _ in reciprocal_rank_fusion([["x"], ["y"]])] == ["x", "y"]  # ties: first appearance wins


def test_dense_top_k_finds_paraphrases_with_scores_and_metadata(index):
    queries, gold = topic_queries()
    results = retriever(index, k=3).retrieve_batch(queries)
    assert top1(results) == gold
    for hits in results:
        assert len(hits) == 3
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert -1.0 <= hits[-1].score < hits[0].score <= 1.0  # cosine similarities (normalised MiniLM, inner product)
    music = results[0][0]
    assert music.metadata == {"topic": "music", "year": 2000} and music.source == "notes/music.txt"
    assert music.text.startswith("The violin")
    assert len(retriever(index, k=3).retrieve(queries[0], k=7)) == 7  # a per-call k overrides the config


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_filters_restrict_every_mode(index, mode):
    r = retriever(index, k=20, mode=mode)
    car = r.retrieve("QX7731 fuel pump relay", filters={"topic": "car"})
    assert car and {h.metadata["topic"] for h in car} == {"car"}
    recent = r.retrieve("QX7731 fuel pump relay violin", filters={"year": {"gte": 2003}})
    assert recent and all(h.metadata["year"] >= 2003 for h in recent)
    assert "code-QX7731#0" in [h.chunk_id for h in recent]
    # the best match is filtered away, so it must not come back
    others = r.retrieve("QX7731 fuel pump relay", filters={"topic": ["music", "space"]})
    assert all(h.metadata["topic"] in ("music", "space") for h in others)
    assert "code-QX7731#0" not in [h.chunk_id for h in others]
    with pytest.raises(ConfigError, match="unknown operator 'near'"):
        r.retrieve("violin", filters={"year": {"near": 2001}})


def test_hybrid_finds_what_dense_or_lexical_alone_misses(index):
    paraphrases, paraphrase_gold = topic_queries()
    codes, code_gold = code_queries()
    dense, lexical, hybrid = (retriever(index, k=3, mode=m) for m in ("dense", "lexical", "hybrid"))
    # each retriever alone misses some passages: dense confuses look-alike codes, BM25 cannot match a paraphrase
    assert top1(dense.retrieve_batch(codes)) != code_gold
    assert top1(lexical.retrieve_batch(codes)) == code_gold
    assert top1(dense.retrieve_batch(paraphrases)) == paraphrase_gold
    assert top1(lexical.retrieve_batch(paraphrases)) == [None] * len(paraphrases)
    assert top1(hybrid.retrieve_batch(codes)) == code_gold
    assert top1(hybrid.retrieve_batch(paraphrases)) == paraphrase_gold


def test_hybrid_scores_are_the_fused_ranks(index):
    query = "QX1377 tyre"
    n = len(corpus_documents())
    dense = [h.chunk_id for h in retriever(index, k=n).retrieve(query)]
    lexical = [h.chunk_id for h in retriever(index, k=n, mode="lexical").retrieve(query)]
    fused = retriever(index, k=4, mode="hybrid", rrf_k=60).retrieve(query)
    expected = reciprocal_rank_fusion([dense, lexical], k=60)[:4]
    assert [(h.chunk_id, pytest.approx(h.score)) for h in fused] == [(key, pytest.approx(s)) for key, s in expected]
    assert fused[0].chunk_id == "code-QX1377#0" and fused[0].text.startswith("Fault QX1377")


@pytest.mark.parametrize("query", ["QX1377 tyre", "QX7731 fuel pump relay violin", "violin fuel pump"])
def test_lexical_weight_moves_hybrid_from_the_dense_order_to_the_lexical_one(index, query):
    n = len(corpus_documents())
    dense = [h.chunk_id for h in retriever(index, k=n).retrieve(query)]
    lexical = [h.chunk_id for h in retriever(index, k=n, mode="lexical").retrieve(query) if h.score > MIN_LEXICAL_SCORE]
    assert lexical and len(dense) == n  # both rankings take part

    def hybrid(**config):
        return retriever(index, k=n, mode="hybrid", **config).retrieve(query)

    plain = hybrid()  # no calibration beside the bundled MiniLM: plain reciprocal-rank fusion, as before weights
    assert [h.chunk_id for h in plain] == [key for key, _ in reciprocal_rank_fusion([dense, lexical])]
    half = hybrid(lexical_weight=0.5)
    assert [(h.chunk_id, h.score) for h in half] == [(h.chunk_id, h.score) for h in plain]  # exactly, ties included
    assert [h.chunk_id for h in hybrid(lexical_weight=0.0)] == dense
    assert [h.chunk_id for h in hybrid(lexical_weight=1.0)][: len(lexical)] == lexical  # dense fills only the tail
    quarter = hybrid(lexical_weight=0.25)
    assert [h.chunk_id for h in quarter] == [key for key, _ in weighted_rank_fusion(dense, lexical, 0.25)]


def test_lexical_weight_comes_from_the_calibration_beside_the_index_embedder(tmp_path, build_index):
    """`rag tune` writes LEXICAL_CALIBRATION into its tuned embedder's directory; any index embedded with that
    embedder (its manifest names the directory) fuses hybrid rankings with that weight unless told otherwise."""
    import json

    from mmadapt.rag.embed import EmbedderConfig, default_model_path, load_embedder
    from mmadapt.rag.store import RagConfig, RagIndex

    embedder_dir = tmp_path / "embedder"  # MiniLM by links: a local embedder directory that may hold a calibration
    for path in default_model_path().rglob("*"):
        if path.is_file():
            (embedder_dir / path.relative_to(default_model_path())).parent.mkdir(parents=True, exist_ok=True)
            (embedder_dir / path.relative_to(default_model_path())).symlink_to(path)
    config = RagConfig(embedder=EmbedderConfig(name=str(embedder_dir)))
    index, _ = RagIndex.build(tmp_path / "index", corpus_documents(), config, embedder=load_embedder(config.embedder))
    query, n = "QX1377 tyre", len(corpus_documents())
    dense = [h.chunk_id for h in retriever(index, k=n).retrieve(query)]
    assert retriever(index, mode="hybrid").lexical_weight == 0.5  # nothing calibrated yet
    (embedder_dir / LEXICAL_CALIBRATION).write_text(json.dumps({"weight": 0.0, "calibrated": True}))
    calibrated = retriever(index, k=n, mode="hybrid")
    assert calibrated.lexical_weight == 0.0 and [h.chunk_id for h in calibrated.retrieve(query)] == dense
    assert retriever(index, mode="hybrid", lexical_weight=0.5).lexical_weight == 0.5  # an explicit weight wins
    (embedder_dir / LEXICAL_CALIBRATION).write_text(json.dumps({"weight": 2}))
    with pytest.raises(ConfigError, match=f"{LEXICAL_CALIBRATION}: 'weight' must be a number in \\[0, 1\\]"):
        retriever(index, mode="hybrid").retrieve(query)
    with pytest.raises(ConfigError, match="retrieve.lexical_weight must be in \\[0, 1\\], got -0.1"):
        RetrieveConfig(lexical_weight=-0.1)


def test_lexical_matches_on_common_words_only_do_not_outvote_dense(index):
    """'fault' is in 6 of the 11 passages: BM25 gives it no weight, so its matches are noise, and without
    evidence they must not push dense's clear answer (the insulin passage) out of the fused ranking."""
    hits = retriever(index, k=3, mode="hybrid").retrieve("fault: what controls glucose levels")
    assert hits[0].chunk_id == "topic-2#0"


def test_cross_encoder_reranks_the_candidates_by_its_scores(index, tmp_path_factory):
    path = make_cross_encoder(tmp_path_factory.mktemp("cross_encoder"))
    query = "what does the dashboard fault mean"
    n = len(corpus_documents())
    dense_all = retriever(index, k=n).retrieve(query)
    reranking = retriever(index, k=3, candidates=6, reranker=str(path))
    reranked = reranking.retrieve(query)
    candidates = dense_all[:6]  # only the dense top-`candidates` are re-scored
    scores = reranking.reranker.predict([(query, h.text) for h in candidates], show_progress_bar=False)
    expected = sorted(zip((h.chunk_id for h in candidates), scores), key=lambda cs: -float(cs[1]))[:3]
    assert [(h.chunk_id, pytest.approx(h.score, abs=1e-5)) for h in reranked] == \
        [(c, pytest.approx(float(s), abs=1e-5)) for c, s in expected]
    assert [h.chunk_id for h in reranked] != [h.chunk_id for h in dense_all[:3]]  # the order really changed
    assert reranking.reranker is reranking.reranker  # loaded once


def test_weighted_fusion_moves_from_the_first_ranking_to_the_second():
    first, second = ["a", "b", "c", "d"], ["d", "c", "b", "a"]
    assert [key for key, _ in weighted_rank_fusion(first, second, 0.0)] == first
    assert [key for key, _ in weighted_rank_fusion(first, second, 1.0)] == second
    scores = dict(weighted_rank_fusion(first, second, 0.25, k=10))
    assert scores["a"] == pytest.approx(0.75 / 11 + 0.25 / 14)
    assert [key for key, _ in weighted_rank_fusion(["x", "y"], ["y", "x"], 0.5)] == ["x", "y"]  # ties: first ranking


def test_rerank_weight_fuses_the_cross_encoder_with_the_first_stage_and_comes_from_its_calibration(index, tmp_path_factory):
    import json

    path = make_cross_encoder(tmp_path_factory.mktemp("cross_encoder"))
    query = "what does the dashboard fault mean"
    first_stage = [h.chunk_id for h in retriever(index, k=6).retrieve(query)]
    alone = [h.chunk_id for h in retriever(index, k=6, candidates=6, reranker=str(path)).retrieve(query)]
    assert [h.chunk_id for h in retriever(index, k=6, candidates=6, reranker=str(path), rerank_weight=0.0).retrieve(query)] \
        == first_stage
    half = [h.chunk_id for h in retriever(index, k=6, candidates=6, reranker=str(path), rerank_weight=0.5).retrieve(query)]
    assert half == [key for key, _ in weighted_rank_fusion(first_stage, alone, 0.5)]
    (path / RERANK_CALIBRATION).write_text(json.dumps({"weight": 0.0}))  # what `rag tune` writes beside its reranker
    calibrated = retriever(index, k=6, candidates=6, reranker=str(path))
    assert calibrated.rerank_weight == 0.0 and [h.chunk_id for h in calibrated.retrieve(query)] == first_stage
    assert retriever(index, reranker=str(path), rerank_weight=1.0).rerank_weight == 1.0  # an explicit weight wins
    (path / RERANK_CALIBRATION).write_text(json.dumps({"weight": 3}))
    with pytest.raises(ConfigError, match=f"{RERANK_CALIBRATION}: 'weight' must be a number in \\[0, 1\\]"):
        retriever(index, reranker=str(path)).retrieve(query)
    with pytest.raises(ConfigError, match="retrieve.rerank_weight must be in \\[0, 1\\]"):
        RetrieveConfig(rerank_weight=1.5)


def test_a_reranker_trained_on_titled_passages_reads_them_titled(build_index, tmp_path):
    import json

    from mmadapt.rag.chunk import Document, sha256_text
    from mmadapt.rag.meta import Hit
    from mmadapt.rag.retrieve import rerank_text

    titled = Hit("d#0", 0.0, "Unscrew the cover.", "s", "d", metadata={"title": "Zorbix procedure"})
    assert rerank_text(titled) == "Zorbix procedure\nUnscrew the cover."
    assert rerank_text(Hit("d#0", 0.0, "Zorbix procedure\nUnscrew it.", "s", "d", metadata={"title": "Zorbix procedure"})) \
        == "Zorbix procedure\nUnscrew it."  # a passage that starts with its title is not given it twice
    assert rerank_text(Hit("d#0", 0.0, "Unscrew it.", "s", "d", metadata={"year": 2000})) == "Unscrew it."
    texts = ["Unscrew the cover and lift the pump out.", "Clean the filter under running water.",
             "Check the fan turns freely before closing the panel."]
    docs = [Document(f"m/{i}.txt", t, f"m-{i}", None, "text", {"title": f"kelvum procedure {i}"}, sha256_text(t))
            for i, t in enumerate(texts)]
    index = build_index(docs)
    path = make_cross_encoder(tmp_path / "cross_encoder")
    query = "kelvum procedure"
    for titles in (False, True):
        (path / RERANK_CALIBRATION).write_text(json.dumps({"weight": 1.0, "titles": titles}))
        reranking = retriever(index, k=3, candidates=3, reranker=str(path))
        hits = reranking.retrieve(query)
        shown = [f"{h.metadata['title']}\n{h.text}" if titles else h.text for h in hits]
        scores = reranking.reranker.predict([(query, text) for text in shown], show_progress_bar=False)
        assert reranking.reads_titles is titles
        assert [h.score for h in hits] == pytest.approx([float(s) for s in scores], abs=1e-5)


def test_unloadable_reranker_is_a_config_error(index, tmp_path):
    with pytest.raises(ConfigError, match="retrieve.reranker .*cannot be loaded"):
        retriever(index, reranker=str(tmp_path / "no-such-model")).retrieve("violin")


def test_image_queries_find_images_of_the_same_colour(tiny_clip, tmp_path):
    from mmadapt.rag.embed import EmbedderConfig
    from mmadapt.rag.ingest import ingest
    from mmadapt.rag.store import RagConfig, RagIndex

    folder = tmp_path / "images"
    folder.mkdir()
    for colour in tiny_clip.colours:
        for seed in (1, 2):
            tiny_clip.image(folder, colour, seed=seed)
    config = RagConfig(embedder=EmbedderConfig(type="open_clip", name=tiny_clip.name))
    clip_index, _ = RagIndex.build(tmp_path / "index", ingest([folder]).documents, config)
    queries = tmp_path / "queries"
    queries.mkdir()
    r = retriever(clip_index, k=2)
    for colour in tiny_clip.colours:
        query = tiny_clip.image(queries, colour, seed=99)  # a new image: not in the index
        hits = r.retrieve(image=query)
        assert [h.modality for h in hits] == ["image", "image"]
        assert all(h.source.endswith(f"{colour}-1.png") or h.source.endswith(f"{colour}-2.png") for h in hits), hits
    both = r.retrieve("a blue picture", image=tiny_clip.image(queries, "blue", seed=98))  # text and image, fused
    assert all("blue" in h.source for h in both)


def test_image_query_on_a_text_index_names_the_fix(index, tmp_path):
    with pytest.raises(ConfigError, match="cannot embed an image query.*open_clip"):
        retriever(index).retrieve(image=tmp_path / "any.png")


def test_bad_queries_and_configs_are_clear_errors(index):
    with pytest.raises(DataError, match="a query needs text, an image, or both"):
        retriever(index).retrieve_batch([])
    with pytest.raises(DataError, match="2 text queries but 1 images"):
        retriever(index).retrieve_batch(["a", "b"], images=["x.png"])
    with pytest.raises(ConfigError, match="retrieve.mode 'bm25'; valid: dense, lexical, hybrid"):
        RetrieveConfig(mode="bm25")
    with pytest.raises(ConfigError, match="retrieve.k must be >= 1"):
        RetrieveConfig(k=0)
    with pytest.raises(ConfigError, match="k must be >= 1, got 0"):
        retriever(index).retrieve("violin", k=0)


def test_recall_and_reciprocal_rank_by_chunk_or_document_id():
    ranked = [{"a#0", "a"}, {"b#0", "b"}, {"c#1", "c"}]
    assert recall_at_k(ranked, {"b", "c#1"}, 1) == 0.0
    assert recall_at_k(ranked, {"b", "c#1"}, 2) == 0.5
    assert recall_at_k(ranked, {"b", "c#1"}, 3) == 1.0
    assert reciprocal_rank(ranked, {"c"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, {"zzz"}) == 0.0
    with pytest.raises(DataError, match="no relevant ids"):
        recall_at_k(ranked, set(), 1)


def test_evaluate_scores_dense_against_lexical(index):
    queries, gold = code_queries()
    relevant = [{g.split("#")[0]} for g in gold]  # judged by document id
    lexical = evaluate(retriever(index, mode="lexical"), queries, relevant, ks=(1, 3))
    dense = evaluate(retriever(index), queries, relevant, ks=(1, 3))
    assert lexical == {"recall_at_1": 1.0, "recall_at_3": 1.0, "mrr": 1.0, "queries": 6.0}
    assert dense["recall_at_1"] < 1.0 and dense["recall_at_1"] <= dense["recall_at_3"]
    assert dense["recall_at_1"] <= dense["mrr"] <= 1.0
    with pytest.raises(DataError, match="6 queries but 1 relevance sets"):
        evaluate(retriever(index), queries, relevant[:1])
    with pytest.raises(ConfigError, match="ks must be cutoffs >= 1"):
        evaluate(retriever(index), queries, relevant, ks=())
