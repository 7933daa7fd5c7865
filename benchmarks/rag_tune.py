"""Domain-adapting the retriever: recall before and after `rag tune` on a generated corpus with its own jargon.

The corpus (mmadapt.rag.domain_data) titles each maintenance procedure in invented words that no pretrained
embedder knows; the queries mix that jargon with plain words. MiniLM is measured on every query (dense, hybrid,
and hybrid + the tuned reranker), then `rag tune` fine-tunes it on (title -> passage) pairs of the corpus itself,
re-embeds the index and the same queries are measured again, in one run; last line `ratio=` (recall@5 after /
before, dense). Hybrid is measured at BM25's share `rag tune` calibrated for the tuned embedder
(retrieve.lexical_weight; plain RRF untuned), the reranker at the fusion weight it calibrated on top, and alone.

    python benchmarks/rag_tune.py [--docs 300] [--epochs 1] [--candidates 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--candidates", type=int, default=20, help="hybrid passages the reranker re-orders")
    parser.add_argument("--reranker-loss", choices=("bce", "mnrl"), default="bce")
    parser.add_argument("--reranker-sentences", action="store_true",
                        help="rag tune --reranker-sentences: also each sentence -> its passage for the reranker")
    parser.add_argument("--reranker-no-titles", action="store_true",
                        help="rag tune --reranker-no-titles: the reranker reads passages without their titles")
    parser.add_argument("--questions-fraction", type=float, default=0.0,
                        help="give `rag tune` the questions of this share of the documents (as an LLM that writes "
                             "questions would) and measure only on the other documents' questions")
    args = parser.parse_args()

    from mmadapt.rag.domain_data import make_domain_corpus, write_records
    from mmadapt.rag.ingest import ingest
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever, evaluate
    from mmadapt.rag.store import RagConfig, RagIndex
    from mmadapt.rag.tune import TuneConfig, tune

    corpus = make_domain_corpus(args.docs)
    asked = set(sorted(set(corpus.relevant))[: int(args.questions_fraction * args.docs)])  # documents with questions
    measured = [(q, d) for q, d in zip(corpus.queries, corpus.relevant) if d not in asked]
    queries, relevant = [q for q, _ in measured], [{d} for _, d in measured]
    with tempfile.TemporaryDirectory(prefix="mmadapt-rag-tune-") as tmp:
        root = Path(tmp)
        write_records(root / "corpus.jsonl", corpus.records)
        questions = None
        if asked:
            questions = root / "questions.jsonl"
            write_records(questions, [{"query": q, "relevant": [d]} for q, d in zip(corpus.queries, corpus.relevant)
                                      if d in asked])
        index, _ = RagIndex.build(root / "index", ingest([root / "corpus.jsonl"]).documents, RagConfig())

        def measure(label: str, reranker: str | None = None) -> dict[str, dict[str, float]]:
            rows = {}
            for mode in ("dense", "hybrid"):
                retriever = Retriever(index, RetrieveConfig(mode=mode))
                rows[mode] = evaluate(retriever, queries, relevant, ks=(1, 5))
            if reranker:  # the order `rag tune` calibrated (retrieve.rerank_weight from the reranker's folder), and
                # the cross-encoder's order alone (weight 1)
                retriever = Retriever(index, RetrieveConfig(mode="hybrid", reranker=reranker, candidates=args.candidates))
                rows["hybrid+rerank"] = evaluate(retriever, queries, relevant, ks=(1, 5))
                rows["rerank alone"] = evaluate(retriever.with_rerank_weight(1.0), queries, relevant, ks=(1, 5))
            for mode, m in rows.items():
                print(f"{label:<8}{mode:<15}recall@1 {m['recall_at_1']:.3f}  recall@5 {m['recall_at_5']:.3f}  "
                      f"mrr {m['mrr']:.3f}")
            return rows

        before = measure("untuned")
        start = time.perf_counter()
        report = tune(index, root / "tuned", TuneConfig(epochs=args.epochs, questions=str(questions) if questions else None,
                                                           reranker_loss=args.reranker_loss,
                                                           reranker_sentences=args.reranker_sentences,
                                                           reranker_titles=not args.reranker_no_titles))
        if asked:
            print(f"questions of {len(asked)} documents given to rag tune; measured on the {len(queries)} questions of the others")
        seconds = time.perf_counter() - start
        index = RagIndex.open(root / "index")  # the re-embedded generation, with the tuned embedder
        after = measure("tuned", report.reranker)
        print(f"tuning: {seconds:.0f} s on {sum(report.pairs.values())} corpus pairs ({report.pairs})")
        print(f"hybrid recall@5 {after['hybrid']['recall_at_5']:.3f} (tuned) at calibrated lexical_weight "
              f"{report.metrics.get('lexical_weight', 0.5):g}; dense {after['dense']['recall_at_5']:.3f}")
        print(f"hybrid+rerank recall@5 {after['hybrid+rerank']['recall_at_5']:.3f} vs hybrid "
              f"{after['hybrid']['recall_at_5']:.3f} (tuned, {args.candidates} candidates, calibrated rerank_weight "
              f"{report.metrics.get('rerank_weight', 1.0):g}; the reranker's order alone "
              f"{after['rerank alone']['recall_at_5']:.3f})")
        print(f"ratio={after['dense']['recall_at_5'] / max(before['dense']['recall_at_5'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
