"""Querying an index: dense top-k with metadata filters, hybrid BM25 + dense by reciprocal-rank fusion,
optional cross-encoder re-ranking, image queries, and retrieval metrics (recall@k, MRR)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable, Literal, Sequence

from mmadapt.errors import ConfigError, DataError
from mmadapt.eval.metrics import recall_at_k, reciprocal_rank  # the one copy of the metric code
from mmadapt.rag.meta import Hit
from mmadapt.rag.store import RagIndex

logger = logging.getLogger(__name__)

RERANK_CALIBRATION = "mmadapt_rerank.json"  # written by `rag tune` beside its reranker: the fusion weight it chose
# written by `rag tune` beside its tuned embedder: the BM25 share of hybrid fusion it chose for indices embedded with it
LEXICAL_CALIBRATION = "mmadapt_lexical.json"
DEFAULT_LEXICAL_WEIGHT = 0.5  # equal shares: plain reciprocal-rank fusion

# FTS5 floors a term's BM25 idf at 1e-6, so a passage matching only words found in half the corpus or more
# ("the", "in") scores about 0: no lexical evidence. Fused by rank, such a match would still outrank a strong
# dense match missing from the lexical list, so hits at or below this score are left out of a fused ranking.
MIN_LEXICAL_SCORE = 1e-3
MODES = ("dense", "lexical", "hybrid")


@dataclass
class RetrieveConfig:
    """How passages are retrieved for a query."""

    k: int = 5
    mode: Literal["dense", "lexical", "hybrid"] = "dense"
    candidates: int = 50  # passages each ranking contributes before fusion or re-ranking
    rrf_k: int = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
    reranker: str | None = None  # a sentence-transformers CrossEncoder: hub id or local path
    reranker_batch_size: int = 32
    # How far the cross-encoder's order replaces the first-stage order: final score = weighted reciprocal-rank
    # fusion, (1 - w) / (rrf_k + first-stage rank) + w / (rrf_k + reranker rank). 1.0: the reranker's order alone;
    # None: the weight `rag tune` calibrated for that reranker (RERANK_CALIBRATION beside it), else 1.0.
    rerank_weight: float | None = None
    # BM25's share of hybrid fusion: 2 (1 - w) / (rrf_k + dense rank) + 2 w / (rrf_k + lexical rank) (doubled so
    # that 0.5 gives plain reciprocal-rank fusion's scores, not only its order); None: the weight `rag tune`
    # calibrated for the index's embedder (LEXICAL_CALIBRATION beside it), else 0.5. A tuned embedder can outgrow
    # BM25, whose equal share then drags it down.
    lexical_weight: float | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"retrieve.k must be >= 1, got {self.k}")
        if self.candidates < 1:
            raise ConfigError(f"retrieve.candidates must be >= 1, got {self.candidates}")
        if self.mode not in MODES:
            raise ConfigError(f"retrieve.mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.rerank_weight is not None and not 0.0 <= self.rerank_weight <= 1.0:
            raise ConfigError(f"retrieve.rerank_weight must be in [0, 1], got {self.rerank_weight}")
        if self.lexical_weight is not None and not 0.0 <= self.lexical_weight <= 1.0:
            raise ConfigError(f"retrieve.lexical_weight must be in [0, 1], got {self.lexical_weight}")


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: int = 60,
                           weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
    """Fuse rankings: score(d) = sum over rankings of weight / (k + rank of d), ranks from 1, weights 1 unless
    given; best first, ties by first appearance."""
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights if weights is not None else [1.0] * len(rankings)):
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def weighted_rank_fusion(first: Sequence[Hashable], second: Sequence[Hashable], weight: float,
                         k: int = 60) -> list[tuple[Hashable, float]]:
    """Reciprocal-rank fusion of two rankings of the same items with weights (1 - weight, weight); best first,
    ties by the first ranking's order."""
    return reciprocal_rank_fusion([first, second], k, (1.0 - weight, weight))


def _calibration(path: Path, what: str, default_weight: float | None) -> dict[str, Any]:
    """A calibration `rag tune` wrote (empty when there is none), its `weight` checked (`default_weight` when it
    has none; None: the file must record one)."""
    from mmadapt.io import read_json

    if not path.is_file():
        return {}
    calibration = read_json(path, what, ConfigError, expect=dict)
    weight = calibration.get("weight", default_weight)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ConfigError(f"{path}: 'weight' must be a number in [0, 1], got {weight!r}")
    return {**calibration, "weight": float(weight)}


def _rerank_calibration(reranker: str) -> dict[str, Any]:
    return _calibration(Path(reranker) / RERANK_CALIBRATION, "a reranker calibration", default_weight=1.0)


def calibrated_rerank_weight(reranker: str) -> float:
    """The fusion weight `rag tune` measured for its reranker on held-out queries; 1.0 for any other cross-encoder."""
    return _rerank_calibration(reranker).get("weight", 1.0)


def reranker_reads_titles(reranker: str) -> bool:
    """Whether the reranker was trained on passages led by their document's title (`rag tune` records it)."""
    return _rerank_calibration(reranker).get("titles") is True


def rerank_text(hit: Hit) -> str:
    """A passage as a title-reading reranker reads it: its document's title (metadata), if any, then its text. A
    title may carry the words a query uses (names, the corpus's own terms) that the passage never repeats."""
    title = hit.metadata.get("title") if hit.metadata else None
    if not isinstance(title, str) or not title.strip() or hit.text.lstrip().startswith(title.strip()):
        return hit.text
    return f"{title.strip()}\n{hit.text}"


def calibrated_lexical_weight(embedder: str) -> float:
    """The BM25 share of hybrid fusion `rag tune` measured for its tuned embedder (LEXICAL_CALIBRATION in its
    directory); 0.5, plain reciprocal-rank fusion, for any other embedder."""
    calibration = _calibration(Path(embedder) / LEXICAL_CALIBRATION, "a lexical-weight calibration", None)
    return calibration.get("weight", DEFAULT_LEXICAL_WEIGHT)


def check_reranker(name: str) -> None:
    """Refuse a cross-encoder whose scoring head is not in its weights (a plain encoder such as an embedder's
    transformer): transformers would initialise the head at random and every ranking would be noise."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ConfigError(f"retrieve.reranker {name!r} cannot be loaded: {e}") from e
    heads = [a for a in config.architectures or [] if a.endswith("ForSequenceClassification")]
    missing: list[str] = []
    if heads:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the check itself reports what is missing
        try:
            _, info = AutoModelForSequenceClassification.from_pretrained(name, output_loading_info=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"retrieve.reranker {name!r} cannot be loaded: {e}") from e
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = list(info.get("missing_keys", []))
    if not heads or missing:
        what = f"its weights lack {', '.join(sorted(missing)[:4])}" if heads else (
            f"it is a {', '.join(config.architectures or ['plain'])} model, not a sequence-classification one")
        raise ConfigError(f"retrieve.reranker {name!r} has no trained scoring head ({what}): it would rank at random; "
                          "give a trained cross-encoder, e.g. OUT/reranker of `mmadapt rag tune`")


class Retriever:
    """Retrieval over one index; the cross-encoder, if any, is loaded once and kept."""

    def __init__(self, index: RagIndex, config: RetrieveConfig | None = None) -> None:
        self.index = index
        self.config = config or RetrieveConfig()
        self._reranker: Any = None
        self._rerank_weight: float | None = self.config.rerank_weight
        self._reads_titles: bool | None = None
        self._lexical_weights: dict[str, float] = {}  # calibrated weight by embedder (a reload may change it)

    @property
    def reranker(self) -> Any:
        if self._reranker is None and self.config.reranker:
            from sentence_transformers import CrossEncoder

            check_reranker(self.config.reranker)
            try:
                self._reranker = CrossEncoder(self.config.reranker, device="cpu")
            except (OSError, ValueError) as e:
                raise ConfigError(f"retrieve.reranker {self.config.reranker!r} cannot be loaded: {e}") from e
        return self._reranker

    def retrieve(
        self, query: str | None = None, k: int | None = None, filters: dict[str, Any] | None = None, image: Any = None,
    ) -> list[Hit]:
        """Top-k passages for a text query, an image (path, bytes or PIL image), or both."""
        return self.retrieve_batch([query] if query is not None else None, k, filters, [image] if image is not None else None)[0]

    def retrieve_batch(
        self, queries: Sequence[str] | None = None, k: int | None = None, filters: dict[str, Any] | None = None,
        images: Sequence[Any] | None = None,
    ) -> list[list[Hit]]:
        """Top-k for each of several queries (embedded in one batch)."""
        k = self.config.k if k is None else k
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if not queries and not images:
            raise DataError("a query needs text, an image, or both")
        n = len(queries or images or [])
        if queries and images and len(queries) != len(images):
            raise DataError(f"{len(queries)} text queries but {len(images)} images")
        if self.index.auto_reload:
            self.index.reload()  # before embedding: a newer generation may have another embedder
        mode = self.config.mode
        depth = max(k, self.config.candidates) if (mode == "hybrid" or self.config.reranker or images and queries) else k
        rankings: list[list[list[Hit]]] = [[] for _ in range(n)]
        weights: list[list[float]] = [[] for _ in range(n)]  # each ranking's share in fusion
        lexical_weight = self.lexical_weight if queries and mode == "hybrid" else DEFAULT_LEXICAL_WEIGHT
        dense_share, lexical_share = 2.0 * (1.0 - lexical_weight), 2.0 * lexical_weight  # 1 and 1 at the default
        if queries and mode in ("dense", "hybrid"):
            for i, hits in enumerate(self.index.search(self.index.embedder.embed_queries(list(queries)), depth, filters)):
                rankings[i].append(hits)
                weights[i].append(dense_share)
        if images:
            if "image" not in self.index.embedder.modalities:
                raise ConfigError(f"{self.index.final_path}: its embedder {self.index.store['embedder']['name']!r} "
                                  "cannot embed an image query; build the index with embedder.type: open_clip")
            for i, hits in enumerate(self.index.search(self.index.embedder.embed_images(list(images)), depth, filters)):
                rankings[i].append(hits)
                weights[i].append(dense_share)
        if queries and mode in ("lexical", "hybrid"):
            for i, query in enumerate(queries):
                hits = self.index.lexical(query, depth, filters)
                if rankings[i]:  # to be fused with a dense ranking
                    hits = [h for h in hits if h.score > MIN_LEXICAL_SCORE]
                rankings[i].append(hits)
                weights[i].append(lexical_share)
        results = []
        for i in range(n):
            hits = self._fuse(rankings[i], weights[i]) if len(rankings[i]) > 1 else rankings[i][0]
            if self.config.reranker and queries:
                hits = self._rerank(queries[i], hits)
            results.append(hits[:k])
        return results

    def _fuse(self, rankings: list[list[Hit]], weights: list[float]) -> list[Hit]:
        """Weighted reciprocal-rank fusion (at the default weights 1 and 1: plain RRF, scores and ties included);
        a ranking weighted 0 only fills the tail."""
        by_id = {h.chunk_id: h for ranking in rankings for h in ranking}
        fused = reciprocal_rank_fusion([[h.chunk_id for h in r] for r in rankings], self.config.rrf_k, weights)
        out = []
        for chunk_id, score in fused:
            hit = by_id[chunk_id]
            out.append(Hit(**{**hit.__dict__, "score": float(score)}))
        return out

    def with_rerank_weight(self, weight: float) -> "Retriever":
        """The same retrieval with another fusion weight, sharing the loaded cross-encoder."""
        other = Retriever(self.index, dataclasses.replace(self.config, rerank_weight=weight))
        other._reranker = self._reranker
        return other

    def with_lexical_weight(self, weight: float) -> "Retriever":
        """The same retrieval with another BM25 share in hybrid fusion, sharing the loaded cross-encoder."""
        other = Retriever(self.index, dataclasses.replace(self.config, lexical_weight=weight))
        other._reranker = self._reranker
        return other

    @property
    def lexical_weight(self) -> float:
        """retrieve.lexical_weight if set, else the one calibrated for the index's current embedder, else 0.5."""
        if self.config.lexical_weight is not None:
            return self.config.lexical_weight
        embedder = self.index.config.embedder.name
        if embedder not in self._lexical_weights:
            self._lexical_weights[embedder] = calibrated_lexical_weight(embedder)
        return self._lexical_weights[embedder]

    @property
    def reads_titles(self) -> bool:
        if self._reads_titles is None:
            self._reads_titles = bool(self.config.reranker) and reranker_reads_titles(self.config.reranker)
        return self._reads_titles

    @property
    def rerank_weight(self) -> float:
        if self._rerank_weight is None:
            self._rerank_weight = calibrated_rerank_weight(self.config.reranker) if self.config.reranker else 1.0
        return self._rerank_weight

    def _rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """Order by the cross-encoder's score of (query, passage), fused with the first-stage order by
        `rerank_weight`; images keep their place at the end."""
        texts = [h for h in hits if h.modality == "text"]
        if not texts or self.rerank_weight == 0.0:
            return hits
        read = rerank_text if self.reads_titles else (lambda h: h.text)
        scores = self.reranker.predict([(query, read(h)) for h in texts], batch_size=self.config.reranker_batch_size,
                                       show_progress_bar=False)
        by_score = sorted(range(len(texts)), key=lambda i: -float(scores[i]))
        if self.rerank_weight == 1.0:
            order = [(i, float(scores[i])) for i in by_score]
        else:
            order = [(int(i), score) for i, score in weighted_rank_fusion(list(range(len(texts))), by_score,
                                                                          self.rerank_weight, self.config.rrf_k)]
        return [Hit(**{**texts[i].__dict__, "score": s}) for i, s in order] + [h for h in hits if h.modality != "text"]


def hit_keys(hit: Hit) -> set[str]:
    """The ids a relevance judgement may name for a hit: its chunk id or its document id."""
    return {hit.chunk_id, hit.doc_id}


def evaluate(
    retriever: Retriever, queries: list[str], relevant: list[set[str]], ks: Iterable[int] = (1, 5, 10),
    filters: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Mean recall@k for each k and MRR (over the deepest k) of `queries` against their relevant ids."""
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ConfigError(f"ks must be cutoffs >= 1, got {ks}")
    if len(queries) != len(relevant):
        raise DataError(f"{len(queries)} queries but {len(relevant)} relevance sets")
    results = retriever.retrieve_batch(queries, k=ks[-1], filters=filters)
    metrics = {f"recall_at_{k}": 0.0 for k in ks} | {"mrr": 0.0}
    for hits, rel in zip(results, relevant):
        ranked = [hit_keys(h) for h in hits]
        for k in ks:
            metrics[f"recall_at_{k}"] += recall_at_k(ranked, rel, k)
        metrics["mrr"] += reciprocal_rank(ranked, rel)
    metrics = {key: value / max(len(queries), 1) for key, value in metrics.items()}  # means over queries
    metrics["queries"] = float(len(queries))
    return metrics
