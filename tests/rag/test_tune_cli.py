"""`mmadapt rag tune` as a user runs it, on the generated jargon corpus: recall@5 after > before on held-out
documents, the tuned embedder/ and reranker/ written, the index re-embedded as a new generation, and
`rag query --rerank OUT/reranker --candidates N` working. Fast: a tiny BERT (hidden 32) built from its config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mmadapt.cli import main
from mmadapt.rag.domain_data import make_domain_corpus, write_records


def tiny_sentence_transformer(path: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved as a sentence-transformers
    model (mean pooling, normalised)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmadapt.rag.embed import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    raw = path / "raw"
    bert.save_pretrained(str(raw))
    tokenizer.save_pretrained(str(raw))
    word = models.Transformer(str(raw), max_seq_length=96)
    model = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    model.save_pretrained(str(path / "st"))
    return path / "st"


def metrics_of(printed: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+)\s+(-?\d+\.\d+)$", printed, re.M)}


def run_tune(tmp_path: Path, capsys, embedder: str | None, *tune_flags: str) -> tuple[Path, Path, dict[str, float]]:
    corpus = make_domain_corpus(120)
    write_records(tmp_path / "corpus.jsonl", corpus.records)
    index, out = tmp_path / "idx", tmp_path / "tuned"
    assert main(["rag", "build", str(tmp_path / "corpus.jsonl"), "--out", str(index)]
                + (["--embedder", embedder] if embedder else [])) == 0
    generation = json.loads((index / "manifest.json").read_text())["store"]["generation"]
    capsys.readouterr()
    assert main(["rag", "tune", str(index), "--out", str(out), "--eval-fraction", "0.25", *tune_flags]) == 0
    printed = capsys.readouterr().out
    metrics = metrics_of(printed)
    assert (out / "embedder" / "modules.json").is_file() and (out / "reranker" / "config.json").is_file()
    assert not (out / "embedder" / "trainer").exists()  # the trainer's scratch stays out of the outputs
    from mmadapt.rag.store import RagIndex

    reopened = RagIndex.open(index)
    assert Path(reopened.store["embedder"]["name"]).resolve() == (out / "embedder").resolve()  # re-embedded
    assert json.loads((index / "manifest.json").read_text())["store"]["generation"] > generation  # a new generation
    assert (index / f"gen-{reopened.store['generation']:06d}").is_dir()
    capsys.readouterr()
    assert main(["rag", "query", str(index), corpus.queries[0], "--mode", "hybrid", "--rerank",
                 str(out / "reranker"), "--candidates", "8", "-k", "3"]) == 0
    ranked = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\s*\d+\. ", line)]
    assert len(ranked) == 3
    orders = {}
    for mode, flags in [("dense", []), ("hybrid", ["--lexical-weight", "0"])]:  # BM25 given no share: dense's order
        assert main(["rag", "query", str(index), corpus.queries[1], "--mode", mode, *flags, "-k", "4", "--json"]) == 0
        orders[mode] = [hit["chunk_id"] for hit in json.loads(capsys.readouterr().out)]
    assert len(orders["dense"]) == 4 and orders["hybrid"] == orders["dense"]
    from mmadapt.rag.retrieve import RERANK_CALIBRATION
    from mmadapt.rag.calibrate import RERANK_WEIGHTS

    calibration = json.loads((out / "reranker" / RERANK_CALIBRATION).read_text())
    assert calibration["calibrated"] and calibration["weight"] in RERANK_WEIGHTS
    assert calibration["titles"] is ("--reranker-no-titles" not in tune_flags)  # how the retriever shows it passages
    assert metrics["rerank_weight"] == calibration["weight"]
    chosen = str(calibration["weight"])
    assert calibration["recall_at_5"][chosen] == max(calibration["recall_at_5"].values())
    assert calibration["mrr"][chosen] == max(m for w, m in calibration["mrr"].items()
                                             if calibration["recall_at_5"][w] == calibration["recall_at_5"][chosen])
    check_lexical_calibration(index, out, metrics, calibration)
    return index, out, metrics


def check_lexical_calibration(index: Path, out: Path, metrics: dict[str, float], rerank: dict) -> None:
    """BM25's share of hybrid fusion, calibrated on the re-embedded index and written beside the tuned embedder,
    is what a retriever of that index uses, and the reranker was calibrated on top of it."""
    from mmadapt.rag.retrieve import LEXICAL_CALIBRATION, RetrieveConfig, Retriever
    from mmadapt.rag.store import RagIndex
    from mmadapt.rag.calibrate import LEXICAL_WEIGHTS

    calibration = json.loads((out / "embedder" / LEXICAL_CALIBRATION).read_text())
    assert calibration["calibrated"] and calibration["weight"] in LEXICAL_WEIGHTS and calibration["queries"] > 0
    assert metrics["lexical_weight"] == calibration["weight"]
    recall = {w: calibration["recall_at_5"][str(w)] for w in LEXICAL_WEIGHTS}
    close = [w for w in LEXICAL_WEIGHTS if recall[w] >= max(recall.values()) - 1 / calibration["queries"] - 1e-9]
    assert calibration["weight"] == min(close)  # the smallest BM25 share within one query of the best recall@5
    assert Retriever(RagIndex.open(index), RetrieveConfig(mode="hybrid")).lexical_weight == calibration["weight"]
    assert rerank["mode"] == "hybrid" and rerank["lexical_weight"] == calibration["weight"]


@pytest.mark.parametrize("reranker_flags", [["--reranker-loss", "bce"],
                                            ["--reranker-loss", "mnrl", "--reranker-sentences", "--reranker-no-titles"]])
def test_tune_cli_with_a_tiny_bert_gains_recall_and_writes_what_it_says(tmp_path, capsys, reranker_flags):
    embedder = tiny_sentence_transformer(tmp_path / "bert")
    _, _, metrics = run_tune(tmp_path, capsys, str(embedder), "--epochs", "20", "--lr", "2e-3", "--batch-size", "16",
                             *reranker_flags)
    assert metrics["after_dense_recall_at_5"] > metrics["before_dense_recall_at_5"] + 0.1, metrics


@pytest.mark.slow
def test_tune_cli_with_the_bundled_minilm_gains_recall(tmp_path, capsys):
    _, _, metrics = run_tune(tmp_path, capsys, None, "--epochs", "2")
    assert metrics["after_dense_recall_at_5"] > metrics["before_dense_recall_at_5"] + 0.1, metrics


def test_split_keeps_evaluation_documents_whole_and_one_known_document_query_for_calibration():
    from mmadapt.rag.calibrate import split_pairs
    from mmadapt.rag.tune import Pair, TuneConfig

    pairs = [Pair(f"title {i}", f"passage {i}", f"doc-{i}", "title") for i in range(40)]
    pairs += [Pair(f"question {i}", f"passage {i}", f"doc-{i}", "question") for i in range(20)]  # docs 0..19: two pairs
    kept, train, calibration, held = split_pairs(pairs, TuneConfig(eval_fraction=0.25, calibration_fraction=0.2))
    assert sorted(map(id, kept)) == sorted(map(id, train + calibration + held))  # each pair in exactly one share
    held_docs, calibration_docs = {p.doc_id for p in held}, {p.doc_id for p in calibration}
    assert len(held_docs) == 10 and not held_docs & {p.doc_id for p in train + calibration}  # whole documents
    assert len(calibration) == len(calibration_docs) == 6  # one pair each from a fifth of the 30 training documents
    # new queries to known documents: a question held out, the document's title pair trained on
    assert all(p.kind == "question" for p in calibration)
    assert calibration_docs <= {p.doc_id for p in train if p.kind == "title"}
    _, train_only, none, _ = split_pairs(pairs, TuneConfig(eval_fraction=0.25), calibrating=False)
    assert not none and len(train_only) == len(train) + len(calibration)


def test_the_lexical_weight_moves_off_dense_only_for_more_than_one_querys_gain():
    from mmadapt.rag.calibrate import choose_lexical_weight

    def table(recalls):
        return {w: {"recall_at_5": r, "mrr": r} for w, r in recalls.items()}

    # 20 queries: one query is 0.05 of recall@5
    assert choose_lexical_weight(table({0.0: 0.80, 0.2: 0.85, 0.4: 0.80}), 20) == 0.0  # +1 query: noise
    assert choose_lexical_weight(table({0.0: 0.80, 0.2: 0.90, 0.4: 0.95}), 20) == 0.2  # within one of the best
    assert choose_lexical_weight(table({0.0: 0.50, 0.5: 0.50, 0.7: 0.90}), 20) == 0.7
