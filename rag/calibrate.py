"""Calibrating a tuned retriever (`rag tune`): which pairs train, calibrate and evaluate (`split_pairs`), BM25's
share of hybrid fusion (`calibrate_lexical`, written beside the tuned embedder) and how far the reranker's order
replaces the first stage's (`calibrate_reranker`, written beside the reranker), each chosen by recall@5 then MRR
on queries neither model was trained on."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from mmadapt.rag.tune import Pair, TuneConfig

logger = logging.getLogger("mmadapt.rag.tune")  # one logger name for the whole of `rag tune`


def recall_by_mode(index: Any, pairs: list[Pair], reranker: str | None = None) -> dict[str, float]:
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever, evaluate

    queries, relevant = [p.query for p in pairs], [{p.doc_id} for p in pairs]
    out = {}
    modes = ["dense", "hybrid"] if index.store.get("lexical") else ["dense"]
    for mode in modes:
        m = evaluate(Retriever(index, RetrieveConfig(mode=mode)), queries, relevant, ks=(1, 5))
        out |= {f"{mode}_{k}": v for k, v in m.items() if k != "queries"}
    if reranker:
        reranking = Retriever(index, RetrieveConfig(mode=modes[-1], reranker=reranker, candidates=RERANK_CANDIDATES))
        m = evaluate(reranking, queries, relevant, ks=(1, 5))
        out |= {f"{modes[-1]}_rerank_{k}": v for k, v in m.items() if k != "queries"}
    return out


def _measure(retriever_at: Callable[[float], Any], weights: Sequence[float], pairs: list[Pair]
             ) -> dict[float, dict[str, float]]:
    """recall@5 and MRR on `pairs` of the retriever at each candidate weight."""
    from mmadapt.rag.retrieve import evaluate

    queries, relevant = [p.query for p in pairs], [{p.doc_id} for p in pairs]
    return {w: evaluate(retriever_at(w), queries, relevant, ks=(5,)) for w in weights}


def _record(target: Path, what: str, weight: float, measured: dict[float, dict[str, float]], queries: int,
            **extra: Any) -> None:
    """Log the chosen weight with what each candidate measured, and write it where the retriever reads it."""
    from mmadapt.io import atomic_write_json

    recall = {str(w): m["recall_at_5"] for w, m in measured.items()}
    logger.info("%s %g (calibration recall@5 by weight on %d queries: %s)", what, weight, queries,
                ", ".join(f"{w}: {r:.3f}" for w, r in recall.items()))
    atomic_write_json(target, {"weight": weight, "calibrated": True, **extra, "queries": queries, "recall_at_5": recall,
                               "mrr": {str(w): m["mrr"] for w, m in measured.items()}})


RERANK_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)  # candidate fusion weights
RERANK_CANDIDATES = 20  # first-stage passages the reranker re-orders when measured here


def calibrate_reranker(index: Any, pairs: list[Pair], reranker: str, titles: bool = False) -> dict[str, float]:
    """Choose retrieve.rerank_weight for `reranker` by recall@5 on `pairs` (queries it was not trained on) and
    write it beside the reranker (RERANK_CALIBRATION), where the retriever finds it."""
    from mmadapt.io import atomic_write_json
    from mmadapt.rag.retrieve import RERANK_CALIBRATION, RetrieveConfig, Retriever

    target = Path(reranker) / RERANK_CALIBRATION
    atomic_write_json(target, {"weight": 1.0, "calibrated": False, "titles": titles})  # how it reads passages
    if not pairs:
        logger.warning("no calibration queries (the corpus is small): the reranker's order is used alone")
        return {"rerank_weight": 1.0}
    mode = "hybrid" if index.store.get("lexical") else "dense"
    first = Retriever(index, RetrieveConfig(mode=mode, reranker=reranker, candidates=RERANK_CANDIDATES))
    measured = _measure(first.with_rerank_weight, RERANK_WEIGHTS, pairs)
    # recall@5 first, then MRR (finer on a few queries); on a full tie the smaller weight: the reranker has to
    # earn its place over the first stage, never subtract from it
    weight = max(reversed(RERANK_WEIGHTS), key=lambda w: (measured[w]["recall_at_5"], measured[w]["mrr"]))
    # the first stage it was measured on top of: hybrid at the lexical weight calibrated just before
    first_stage = {"mode": mode} | ({"lexical_weight": first.lexical_weight} if mode == "hybrid" else {})
    _record(target, "reranker fusion weight", weight, measured, len(pairs), titles=titles, **first_stage,
            candidates=RERANK_CANDIDATES)
    return {"rerank_weight": weight, "pairs_calibration": float(len(pairs))}


LEXICAL_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # candidate BM25 shares of hybrid fusion


def choose_lexical_weight(measured: dict[float, dict[str, float]], queries: int) -> float:
    """The smallest BM25 share whose recall@5 is within one calibration query of the best. The embedder was just
    tuned on this corpus: BM25 gets a larger share only when it wins by more than one query, since a few dozen queries cannot tell smaller differences from noise (one run chose 0.4 on
    27 queries by the plain maximum, where 0.4 cost 0.33 recall@5 on unseen questions against 0.2)."""
    best = max(m["recall_at_5"] for m in measured.values())
    close = sorted(w for w, m in measured.items() if m["recall_at_5"] >= best - 1.0 / max(queries, 1) - 1e-9)
    return close[0]


def calibrate_lexical(index: Any, pairs: list[Pair], embedder: str) -> dict[str, float]:
    """Choose retrieve.lexical_weight for the index embedded with `embedder` by recall@5, then MRR, on `pairs`
    (queries neither model was trained on) and write it beside the embedder (LEXICAL_CALIBRATION), where the
    retriever of any index embedded with it finds it."""
    from mmadapt.io import atomic_write_json
    from mmadapt.rag.retrieve import DEFAULT_LEXICAL_WEIGHT, LEXICAL_CALIBRATION, RetrieveConfig, Retriever

    target = Path(embedder) / LEXICAL_CALIBRATION
    if not pairs:
        logger.warning("no calibration queries (the corpus is small): hybrid keeps plain reciprocal-rank fusion")
        atomic_write_json(target, {"weight": DEFAULT_LEXICAL_WEIGHT, "calibrated": False})
        return {"lexical_weight": DEFAULT_LEXICAL_WEIGHT}
    measured = _measure(Retriever(index, RetrieveConfig(mode="hybrid")).with_lexical_weight, LEXICAL_WEIGHTS, pairs)
    weight = choose_lexical_weight(measured, len(pairs))
    _record(target, "hybrid lexical weight", weight, measured, len(pairs))
    return {"lexical_weight": weight}


def split_pairs(pairs: list[Pair], config: TuneConfig, calibrating: bool = True
                ) -> tuple[list[Pair], list[Pair], list[Pair], list[Pair]]:
    """(all pairs kept, training, calibration, evaluation). Evaluation takes whole documents, never trained on, so
    nothing leaks into the before/after figures. Calibration (when `calibrating`) takes one pair from each of a
    share of the other documents and keeps it from both models' training, while their other pairs are trained
    on: the weights are chosen on new queries to documents the models know, as the tuned retriever is queried.
    Calibrated on memorised queries, dense would look perfect; on unseen documents, far weaker than it will be.
    Documents with a single pair are drawn only when too few have more."""
    rng = random.Random(config.seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    pairs = pairs[: config.max_pairs]
    docs = sorted({p.doc_id for p in pairs})
    held = set(rng.sample(docs, int(len(docs) * config.eval_fraction)))
    by_doc: dict[str, list[Pair]] = {}
    for pair in pairs:
        if pair.doc_id not in held:
            by_doc.setdefault(pair.doc_id, []).append(pair)
    n = int(len(by_doc) * config.calibration_fraction) if calibrating else 0
    multi = sorted(d for d, ps in by_doc.items() if len(ps) > 1)
    single = sorted(d for d, ps in by_doc.items() if len(ps) == 1)
    chosen = rng.sample(multi, min(n, len(multi))) + rng.sample(single, max(0, n - len(multi)))
    # a question, if the document has one: the kind of query the retriever will be asked
    calibration = [next((p for p in by_doc[d] if p.kind == "question"), by_doc[d][0]) for d in chosen]
    kept = {id(p) for p in calibration}
    return (pairs, [p for p in pairs if p.doc_id not in held and id(p) not in kept], calibration,
            [p for p in pairs if p.doc_id in held])
