"""The one copy of mmadapt's metric code: answer matching, ANLS, BLEU / ROUGE-L / chrF (through sacrebleu and
rouge-score), perplexity, preference accuracy, recall@k / MRR, and bootstrap confidence intervals.

Every function is pure (lists of numbers or strings in, numbers out); the quickstarts, `mmadapt eval` and the
RAG evaluation all call these, so "accuracy" means the same thing everywhere.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence

from mmadapt.errors import DataError


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation ("A red Circle." -> "a red circle")."""
    text = text.lower().strip()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .!?,;:")


def answer_correct(prediction: str, references: str | Sequence[str], normalize: bool = True) -> float:
    """1.0 when `prediction` equals any reference (after `normalize_answer` unless `normalize` is False)."""
    refs = [references] if isinstance(references, str) else list(references)
    norm = normalize_answer if normalize else (lambda s: s)
    return float(any(norm(prediction) == norm(r) for r in refs))


def accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]], normalize: bool = True) -> float:
    """Share of predictions matching a reference (normalised match by default; `normalize=False`: exact)."""
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    return sum(answer_correct(p, r, normalize) for p, r in zip(predictions, references)) / max(len(predictions), 1)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), O(len(a) * len(b))."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, references: str | Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer (DocVQA): max over references of 1 - NL,
    0 where the normalised distance reaches `threshold`."""
    refs = [references] if isinstance(references, str) else list(references)
    best = 0.0
    p = normalize_answer(prediction)
    for ref in refs:
        r = normalize_answer(ref)
        dist = levenshtein(p, r) / max(len(p), len(r), 1)
        best = max(best, 1.0 - dist if dist < threshold else 0.0)
    return best


def _reference_streams(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """sacrebleu's layout: one stream per reference position (items with fewer references repeat their first)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max((len(r) for r in refs), default=1)
    return [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]


def _require(module: str, package: str):
    """Import an optional metric library, saying how to install it when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this metric needs {package}: pip install 'mmadapt[eval]' (or pip install {package})") from e


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU (0-100) via sacrebleu with its default 13a tokenisation."""
    sacrebleu = _require("sacrebleu", "sacrebleu")

    return float(sacrebleu.corpus_bleu(list(predictions), _reference_streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF (0-100) via sacrebleu."""
    sacrebleu = _require("sacrebleu", "sacrebleu")

    return float(sacrebleu.corpus_chrf(list(predictions), _reference_streams(references)).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[float]:
    """ROUGE-L F-measure (0-1) per item via rouge-score (best over an item's references)."""
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out = []
    for p, r in zip(predictions, references):
        refs = [r] if isinstance(r, str) else list(r)
        out.append(max(scorer.score(ref, p)["rougeL"].fmeasure for ref in refs))
    return out


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[float]) -> float:
    """exp(total negative log-likelihood / total tokens): token-weighted over the corpus."""
    total = sum(token_counts)
    if total <= 0:
        raise DataError("perplexity over zero tokens")
    return math.exp(sum(nll_sums) / total)


def preference(chosen_logps: Sequence[float], rejected_logps: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per pair: (1.0 when the chosen answer is more likely than the rejected one, log-likelihood margin)."""
    wins = [float(c > r) for c, r in zip(chosen_logps, rejected_logps)]
    margins = [c - r for c, r in zip(chosen_logps, rejected_logps)]
    return wins, margins


def recall_at_k(ranked: Sequence[set[str]], relevant: set[str], k: int) -> float:
    """Fraction of the relevant ids found among the first k results (each result a set of ids it answers to)."""
    if not relevant:
        raise DataError("a query with no relevant ids cannot be scored")
    found = set().union(*ranked[:k]) if ranked[:k] else set()
    return len(relevant & found) / len(relevant)


def reciprocal_rank(ranked: Sequence[set[str]], relevant: set[str]) -> float:
    """1 / rank of the first relevant result (0 when none is retrieved)."""
    for rank, keys in enumerate(ranked, 1):
        if keys & relevant:
            return 1.0 / rank
    return 0.0


def citation_correct(cited_texts: Sequence[str], answer: str) -> float:
    """1.0 when some cited passage contains the reference answer (normalised, whole words)."""
    needle = normalize_answer(answer)
    if not needle:
        return 0.0
    pattern = re.compile(r"(?<!\w)" + re.escape(needle) + r"(?!\w)")
    return float(any(pattern.search(normalize_answer(t)) for t in cited_texts))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_ci(values: Sequence, statistic: Callable[[list], float] = mean, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over items (resampled with replacement, `n` times).

    `values` may be any per-item records (e.g. (prediction, reference) pairs for corpus BLEU);
    `statistic` maps a resampled list to a number. A fixed seed makes a report reproducible.
    """
    items = list(values)
    if not items or n <= 0:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    stats = sorted(statistic([items[rng.randrange(len(items))] for _ in items]) for _ in range(n))
    lo = stats[int(math.floor((1 - level) / 2 * (n - 1)))]
    hi = stats[int(math.ceil((1 + level) / 2 * (n - 1)))]
    return float(lo), float(hi)
