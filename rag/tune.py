"""Domain adaptation of the retriever from the corpus alone: `mmadapt rag tune`.

Pairs come from the indexed passages themselves (a record's title -> its passage, a markdown section heading ->
its section, a first sentence -> the rest of the passage) and, optionally, from questions in a JSONL file
(e.g. written by an adapted LLM). The embedder is fine-tuned with sentence-transformers' own trainer and
MultipleNegativesRankingLoss (in-batch negatives plus one hard negative mined with the current embedder);
a cross-encoder reranker is trained on the same pairs (positive vs negatives mined with the *tuned* embedder,
binary cross-entropy with positives weighted by the negatives per positive), reading each passage led by its
document's title as the retriever will show it passages (retrieve.rerank_text).
The tuned embedder then re-embeds the index as a new generation (the old one stays until the new commits).
A held-out share of the documents, never trained on, measures recall before and after; one pair from each of another
share, kept from the embedder's and the reranker's training (the documents' other pairs are trained on, as the
corpus is when deployed), calibrates on the re-embedded index first BM25's share of hybrid fusion
(retrieve.lexical_weight, written beside the tuned embedder), then, on top of that hybrid, how far the reranker's
order replaces it (retrieve.rerank_weight, written beside the reranker).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.calibrate import calibrate_lexical, calibrate_reranker, recall_by_mode, split_pairs

logger = logging.getLogger(__name__)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)


@dataclass
class TuneConfig:
    """How the retriever is adapted (`mmadapt rag tune`)."""

    epochs: float = 2.0
    batch_size: int = 16  # in-batch negatives: each query is contrasted with the other passages of its batch
    lr: float = 5e-5
    hard_negatives: int = 1  # mined per pair with the current embedder (0: in-batch negatives only)
    reranker: bool = True  # also train a cross-encoder reranker
    # measured on benchmarks/rag_tune.py: 1 epoch with 1 negative mined by the untuned embedder ranked worse than
    # chance (recall@5 0.06); 3 epochs with 4 negatives mined by the tuned embedder, positives weighted 4x, 0.27
    reranker_epochs: float = 3.0
    reranker_lr: float = 5e-5
    reranker_negatives: int = 4  # per pair, mined with the tuned embedder (the confusions it leaves for the reranker)
    # bce: each (query, passage) scored on its own; mnrl: the positive ranked against its mined negatives and the
    # batch's other passages (sentence-transformers' cross-encoder MultipleNegativesRankingLoss)
    reranker_loss: Literal["bce", "mnrl"] = "bce"
    # also train the reranker on (each sentence -> its passage) of the training documents: many more pairs, each
    # to be told from the near-duplicates the tuned embedder confuses it with (the embedder keeps the corpus pairs)
    reranker_sentences: bool = False
    # the reranker reads each passage led by its document's title (metadata), trained and queried alike (recorded
    # beside it): a title's words (the corpus's own terms) are then matched directly, not learnt from a few pairs
    reranker_titles: bool = True
    eval_fraction: float = 0.1  # pairs held out (never trained on) to measure recall before and after
    # training documents one pair of each of which is kept from the embedder and the reranker to choose BM25's share
    # of hybrid fusion (retrieve.lexical_weight, among LEXICAL_WEIGHTS) and how far the reranker's order replaces the
    # first stage's (retrieve.rerank_weight, among RERANK_WEIGHTS): a ranking that would subtract gets a small weight
    calibration_fraction: float = 0.1
    max_pairs: int = 50_000
    questions: str | None = None  # JSONL {query, relevant: [chunk or doc ids]} added to the corpus pairs
    reembed: bool = True  # re-embed the index with the tuned embedder (a new generation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError(f"tune: epochs and lr must be > 0 and batch_size >= 2, got {self.epochs}, {self.lr}, "
                              f"{self.batch_size}")
        if not 0 <= self.calibration_fraction < 1:
            raise ConfigError(f"tune: calibration_fraction must be in [0, 1), got {self.calibration_fraction}")
        if not 0 <= self.eval_fraction < 1 or self.hard_negatives < 0 or self.reranker_negatives < 1:
            raise ConfigError(f"tune: eval_fraction must be in [0, 1), hard_negatives >= 0 and reranker_negatives >= 1, "
                              f"got {self.eval_fraction}, {self.hard_negatives}, {self.reranker_negatives}")


@dataclass
class Pair:
    query: str
    positive: str
    doc_id: str  # the document the positive belongs to (a mined negative never comes from it)
    kind: str  # title | heading | first_sentence | question


@dataclass
class TuneReport:
    pairs: dict[str, int] = field(default_factory=dict)  # kind -> count
    metrics: dict[str, float] = field(default_factory=dict)
    embedder: str = ""
    reranker: str | None = None


def corpus_pairs(hits: list[Any]) -> list[Pair]:
    """(query, passage) pairs the corpus yields: title -> first passage of its document, section heading ->
    section, and for a document with neither, its first sentence -> the rest of its first passage."""
    from mmadapt.rag.chunk import sentence_spans

    pairs: list[Pair] = []
    first: dict[str, Any] = {}
    for hit in hits:
        if hit.modality != "text" or not hit.text.strip():
            continue
        first.setdefault(hit.doc_id, hit)
        heading = _HEADING.match(hit.text)
        if heading:
            body = hit.text[heading.end():].strip()
            if body:
                pairs.append(Pair(heading.group(1), body, hit.doc_id, "heading"))
    titled = set()
    for doc_id, hit in first.items():
        title = hit.metadata.get("title")
        if isinstance(title, str) and title.strip():
            pairs.append(Pair(title.strip(), hit.text, doc_id, "title"))
            titled.add(doc_id)
    headed = {p.doc_id for p in pairs if p.kind == "heading"}
    for doc_id, hit in first.items():
        if doc_id in titled or doc_id in headed:
            continue
        spans = sentence_spans(hit.text)
        if len(spans) >= 2:
            rest = hit.text[spans[1][0]:].strip()
            pairs.append(Pair(hit.text[spans[0][0]:spans[0][1]].strip(), rest, doc_id, "first_sentence"))
    return pairs


def sentence_pairs(hits: list[Any], min_words: int = 4) -> list[Pair]:
    """(sentence, its passage) for every sentence of `min_words` words or more in a passage of two sentences or
    more: many more pairs than titles and headings, each asking the reranker to tell its passage from the
    near-duplicates the tuned embedder confuses it with (kind "sentence")."""
    from mmadapt.rag.chunk import sentence_spans

    pairs = []
    for hit in hits:
        if hit.modality != "text":
            continue
        spans = sentence_spans(hit.text)
        if len(spans) < 2:
            continue  # the sentence would be the whole passage: nothing to learn but copying
        pairs += [Pair(hit.text[a:b].strip(), hit.text, hit.doc_id, "sentence") for a, b in spans
                  if len(hit.text[a:b].split()) >= min_words]
    return pairs


def reranker_sentence_pairs(hits: list[Any], train_pairs: list[Pair]) -> list[Pair]:
    """Sentence pairs of the documents with training pairs only: never of an evaluation document."""
    trained = {p.doc_id for p in train_pairs}
    return [p for p in sentence_pairs(hits) if p.doc_id in trained]


def titled_passages(hits: list[Any], pairs: list[Pair], negatives: list[list[str]]
                    ) -> tuple[list[Pair], list[list[str]]]:
    """The reranker's pairs and negatives with each passage led by its document's title, as the retriever will
    show it passages (retrieve.rerank_text)."""
    from mmadapt.rag.retrieve import rerank_text

    titled = {h.text: rerank_text(h) for h in hits}
    pairs = [dataclasses.replace(p, positive=titled.get(p.positive, p.positive)) for p in pairs]
    return pairs, [[titled.get(t, t) for t in negs] for negs in negatives]


def question_pairs(path: str, index: Any) -> list[Pair]:
    """Pairs from a JSONL of {query, relevant: [ids]} (written by a person or generated by an LLM)."""
    from mmadapt.data.records import read_records

    pairs = []
    for where, record in read_records(path):
        query, relevant = record.get("query", record.get("question")), record.get("relevant")
        if not isinstance(query, str) or not isinstance(relevant, list) or not relevant:
            raise DataError(f"{where}: expected {{\"query\": str, \"relevant\": [chunk or doc ids]}}")
        hits = index.get(chunk_ids=[str(r) for r in relevant], doc_ids=[str(r) for r in relevant])
        if not hits:
            raise DataError(f"{where}: none of {relevant[:5]} is a chunk or document id of {index.final_path}")
        pairs += [Pair(query, h.text, h.doc_id, "question") for h in hits[:1]]
    return pairs


def mine_negatives(index: Any, pairs: list[Pair], n: int, embedder: Any = None, passages: list[Any] | None = None,
                   block: int = 512) -> list[list[str]]:
    """For each pair, the `n` passages ranked highest that are not from its document: by the index's embedder over
    its vectors, or by `embedder` (e.g. the one just tuned) over `passages` (hits), exactly, `block` queries at a time."""
    import numpy as np

    from mmadapt.rag.index import exact_topk

    if n == 0:
        return [[] for _ in pairs]
    queries = [p.query for p in pairs]
    if embedder is None:
        ranked = [[(h.text, h.doc_id) for h in hits]
                  for hits in index.search(index.embedder.embed_queries(queries), k=n + 8)]
    else:
        passages = passages or []
        vectors, ids = embedder.embed_documents([h.text for h in passages]), np.arange(len(passages))
        query_vectors = embedder.embed_queries(queries)
        ranked = []
        for i in range(0, len(queries), block):
            _, top = exact_topk(query_vectors[i : i + block], vectors, ids, n + 8, index.config.index.metric)
            ranked += [[(passages[j].text, passages[j].doc_id) for j in row if j >= 0] for row in top]
    return [[text for text, doc_id in hits if doc_id != pair.doc_id and text != pair.positive][:n]
            for pair, hits in zip(pairs, ranked)]


def _training_args(cls: Any, scratch: str, config: TuneConfig, epochs: float, lr: float, **extra: Any) -> Any:
    # the trainer's own output_dir is scratch (save_strategy "no"): the models are saved where the caller says
    return cls(output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=config.batch_size,
               learning_rate=lr, warmup_steps=0.1, seed=config.seed, save_strategy="no", report_to=[],
               logging_steps=10, use_cpu=True, dataloader_num_workers=0, disable_tqdm=None, **extra)


def train_embedder(base: Any, pairs: list[Pair], negatives: list[list[str]], out: Path, config: TuneConfig) -> Path:
    """Fine-tune the sentence-transformers model `base` on the pairs (MNRL: in-batch + hard negatives); saved to `out`."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer import (
        SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses,
    )
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    columns: dict[str, list[str]] = {"anchor": [p.query for p in pairs], "positive": [p.positive for p in pairs]}
    width = min((len(n) for n in negatives), default=0)  # MNRL needs the same number of negative columns per row
    for j in range(width):
        columns[f"negative_{j}"] = [n[j] for n in negatives]
    with tempfile.TemporaryDirectory(prefix="mmadapt-tune-") as scratch:
        args = _training_args(SentenceTransformerTrainingArguments, scratch, config, config.epochs, config.lr,
                              batch_sampler=BatchSamplers.NO_DUPLICATES)  # a duplicate in a batch: a false negative
        trainer = SentenceTransformerTrainer(model=base, args=args, train_dataset=Dataset.from_dict(columns),
                                             loss=losses.MultipleNegativesRankingLoss(base))
        trainer.train()
    base.save_pretrained(str(out))
    return out


def train_reranker(base_path: str, pairs: list[Pair], negatives: list[list[str]], out: Path, config: TuneConfig,
                   corpus: list[str]) -> Path:
    """A cross-encoder (the embedder's transformer with a new one-logit head) trained on positive and negative
    passages of each query; saved to `out` with its trained head."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    rng = random.Random(config.seed)
    if config.reranker_loss == "mnrl":
        return _train_reranker_listwise(base_path, pairs, negatives, out, config, corpus, rng)
    queries, passages, labels = [], [], []
    for pair, negs in zip(pairs, negatives):
        negs = negs or [t for t in rng.sample(corpus, min(2, len(corpus))) if t != pair.positive][:1]
        for text, label in [(pair.positive, 1.0)] + [(n, 0.0) for n in negs]:
            queries.append(pair.query)
            passages.append(text)
            labels.append(label)
    model = _cross_encoder(base_path)
    dataset = Dataset.from_dict({"query": queries, "passage": passages, "label": labels})
    # positives weighted by the negatives per positive, as sentence-transformers' MS MARCO BCE recipe does
    positives = max(1.0, sum(labels))
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(max(1.0, len(labels) - positives) / positives))
    with tempfile.TemporaryDirectory(prefix="mmadapt-tune-") as scratch:
        args = _training_args(CrossEncoderTrainingArguments, scratch, config, config.reranker_epochs, config.reranker_lr)
        CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    model.save_pretrained(str(out))
    return out


def _cross_encoder(base_path: str) -> Any:
    """A cross-encoder on the embedder's transformer with a new one-logit head (the head is what training adds)."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is expected to be untrained here: it is what we train
    try:
        return CrossEncoder(base_path, num_labels=1, device="cpu")
    finally:
        hf_logging.set_verbosity(verbosity)


def _train_reranker_listwise(base_path: str, pairs: list[Pair], negatives: list[list[str]], out: Path,
                             config: TuneConfig, corpus: list[str], rng: random.Random) -> Path:
    """The reranker trained to rank each positive above its mined negatives and the batch's other passages."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    n = config.reranker_negatives
    columns: dict[str, list[str]] = {"query": [p.query for p in pairs], "positive": [p.positive for p in pairs]}
    for i in range(n):
        columns[f"negative_{i}"] = []
    for pair, negs in zip(pairs, negatives):
        fill = [t for t in rng.sample(corpus, min(len(corpus), n + 1)) if t != pair.positive and t not in negs]
        for i, text in enumerate((list(negs) + fill)[:n]):
            columns[f"negative_{i}"].append(text)
    model = _cross_encoder(base_path)
    loss = MultipleNegativesRankingLoss(model, num_negatives=n)
    with tempfile.TemporaryDirectory(prefix="mmadapt-tune-") as scratch:
        args = _training_args(CrossEncoderTrainingArguments, scratch, config, config.reranker_epochs, config.reranker_lr)
        CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns), loss=loss).train()
    model.save_pretrained(str(out))
    return out


def tune(index: Any, out: str | Path, config: TuneConfig | None = None, overwrite: bool = False) -> TuneReport:
    """Adapt `index`'s retriever to its corpus: write OUT/embedder (and OUT/reranker), re-embed the index."""
    from mmadapt.io import output_directory
    from mmadapt.lineage import write_manifest
    from mmadapt.rag.embed import load_embedder
    from mmadapt.rag.retrieve import rerank_text

    config = config or TuneConfig()
    out = Path(out)
    if index.store["embedder"]["type"] != "sentence-transformers":
        raise ConfigError(f"{index.final_path}: rag tune adapts sentence-transformers embedders, this index uses "
                          f"{index.store['embedder']['type']}")
    hits = index.get(chunk_ids=index.chunk_ids())
    pairs = corpus_pairs(hits) + (question_pairs(config.questions, index) if config.questions else [])
    if len(pairs) < 2 * config.batch_size:
        raise DataError(f"{index.final_path}: the corpus yields {len(pairs)} training pairs (titles, headings, first "
                        f"sentences), fewer than 2 batches of {config.batch_size}; add --questions or lower --batch-size")
    lexical = bool(index.store.get("lexical")) and config.reembed  # a hybrid of the re-embedded index to calibrate
    pairs, train_pairs, calibration_pairs, eval_pairs = split_pairs(pairs, config, calibrating=config.reranker or lexical)
    report = TuneReport(pairs={k: sum(p.kind == k for p in pairs) for k in sorted({p.kind for p in pairs})})
    logger.info("tuning on %d pairs (%s), %d held out", len(train_pairs), report.pairs, len(eval_pairs))
    if eval_pairs:
        report.metrics |= {f"before_{k}": v for k, v in recall_by_mode(index, eval_pairs).items()}
    started = time.perf_counter()
    negatives = mine_negatives(index, train_pairs, config.hard_negatives)
    base_config = index.config.embedder
    with output_directory(out, "rag_tune", overwrite) as tmp:
        base = load_embedder(base_config)
        train_embedder(base.model, train_pairs, negatives, tmp / "embedder", config)
        if config.reranker:
            texts = [h for h in hits if h.modality == "text"]
            # the reranker's negatives are the tuned embedder's confusions: what it will be asked to sort out
            rerank_pairs = train_pairs + (reranker_sentence_pairs(texts, train_pairs) if config.reranker_sentences else [])
            rerank_negatives = mine_negatives(index, rerank_pairs, config.reranker_negatives, base, texts)
            if config.reranker_titles:
                rerank_pairs, rerank_negatives = titled_passages(texts, rerank_pairs, rerank_negatives)
            train_reranker(str(tmp / "embedder"), rerank_pairs, rerank_negatives, tmp / "reranker", config,
                           [rerank_text(h) if config.reranker_titles else h.text for h in texts])
        report.metrics["train_seconds"] = time.perf_counter() - started
        write_manifest(tmp, "rag_tune", dataclasses.asdict(config), inputs=[index.path], final_path=out,
                       extra={"pairs": report.pairs})
    report.embedder = str((out / "embedder").resolve())
    report.reranker = str((out / "reranker").resolve()) if config.reranker else None
    if config.reembed:
        tuned = load_embedder(dataclasses.replace(base_config, name=report.embedder))
        index.reembed(tuned)
    if lexical:  # before the reranker's: its weight is measured on top of the calibrated hybrid
        report.metrics |= calibrate_lexical(index, calibration_pairs, report.embedder)
    if report.reranker:
        report.metrics |= calibrate_reranker(index, calibration_pairs, report.reranker, titles=config.reranker_titles)
    if config.reembed:
        if eval_pairs:
            report.metrics |= {f"after_{k}": v for k, v in recall_by_mode(index, eval_pairs, report.reranker).items()}
    report.metrics["pairs_train"] = float(len(train_pairs))
    report.metrics["pairs_calibration"] = float(len(calibration_pairs))
    report.metrics["pairs_eval"] = float(len(eval_pairs))
    return report
