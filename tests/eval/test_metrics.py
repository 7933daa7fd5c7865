"""The metric functions on inputs with known answers (each metric shown to fail where it should)."""

import math

import pytest

from mmadapt.errors import DataError
from mmadapt.eval import metrics as M


def test_normalised_and_exact_match_differ_where_they_should():
    assert M.normalize_answer("  A red   Circle. ") == "a red circle"
    preds, refs = ["A red circle.", "blue", "two"], ["a red circle", ["green", "Blue"], "three"]
    assert M.accuracy(preds, refs) == pytest.approx(2 / 3)
    assert M.accuracy(preds, refs, normalize=False) == 0.0
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        M.accuracy(["a", "b"], ["a"])


def test_anls_known_values():
    assert M.anls("hello", "hello") == 1.0
    assert M.anls("helo", "hello") == pytest.approx(0.8)  # one deletion over 5 characters
    assert M.anls("abcdef", "uvwxyz") == 0.0  # distance over the threshold scores zero
    assert M.anls("helo", ["zzz", "hello"]) == pytest.approx(0.8)  # best reference counts


def test_bleu_chrf_rouge_through_the_libraries():
    ref = "the quick brown fox jumps over the lazy dog"
    assert M.bleu([ref], [ref]) == pytest.approx(100.0)
    assert M.chrf([ref], [ref]) == pytest.approx(100.0)
    assert M.rouge_l([ref], [ref]) == [pytest.approx(1.0)]
    other = "a slow green turtle sits under an old tree"
    assert M.bleu([other], [ref]) < 5 and M.chrf([other], [ref]) < 30
    assert M.rouge_l([other, "the lazy dog"], [ref, ref])[0] == 0.0
    # ROUGE-L of a 3-word subsequence of a 9-word reference: P=1, R=1/3 -> F=0.5
    assert M.rouge_l(["the lazy dog"], [ref])[0] == pytest.approx(0.5)
    # several references: the best one counts
    assert M.bleu([ref], [[other, ref]]) == pytest.approx(100.0)


def test_perplexity_preference_retrieval():
    assert M.perplexity([2 * math.log(2), 2 * math.log(2)], [2, 2]) == pytest.approx(2.0)
    wins, margins = M.preference([-1.0, -5.0], [-2.0, -3.0])
    assert wins == [1.0, 0.0] and margins == [pytest.approx(1.0), pytest.approx(-2.0)]
    ranked = [{"a"}, {"b", "doc-b"}, {"c"}]
    assert M.recall_at_k(ranked, {"doc-b"}, 1) == 0.0 and M.recall_at_k(ranked, {"doc-b"}, 2) == 1.0
    assert M.recall_at_k(ranked, {"a", "z"}, 3) == 0.5
    assert M.reciprocal_rank(ranked, {"c"}) == pytest.approx(1 / 3) and M.reciprocal_rank(ranked, {"z"}) == 0.0
    assert M.citation_correct(["Paris is the capital of France."], "paris") == 1.0
    assert M.citation_correct(["Comparison of capitals."], "paris") == 0.0  # whole words only
    assert M.citation_correct([], "paris") == 0.0


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_items():
    assert M.bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    lo, hi = M.bootstrap_ci(small, n=500)
    assert lo < 0.5 < hi
    lo2, hi2 = M.bootstrap_ci(large, n=500)
    assert lo < lo2 < 0.5 < hi2 < hi
    assert M.bootstrap_ci(small, n=500, seed=3) == M.bootstrap_ci(small, n=500, seed=3)  # reproducible
    # a corpus statistic over per-item records
    lo3, hi3 = M.bootstrap_ci([(1.0, 1), (3.0, 1)], lambda ps: sum(a for a, _ in ps) / len(ps), n=200)
    assert 1.0 <= lo3 <= hi3 <= 3.0
