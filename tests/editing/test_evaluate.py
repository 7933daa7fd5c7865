"""Evaluation: the n-gram entropy formula, and the metrics of a model that knows its facts."""

import math

import pytest

from mmadapt.editing.evaluate import evaluate, fill_missing_targets, format_table, ngram_entropy
from mmadapt.editing.requests import parse_requests
from mmadapt.errors import DataError
from edit_helpers import fact_request


def test_ngram_entropy_by_hand():
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # bigrams ab, ba, ab
    h3 = 1.0  # trigrams aba, bab
    assert ngram_entropy("a b a b".split()) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert ngram_entropy(["x"] * 10) == 0.0  # a degenerate repetition has no entropy


def test_metrics_of_the_unedited_model(facts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, world = facts.directory, facts.world
    model = AutoModelForCausalLM.from_pretrained(directory / "llm").eval()
    tok = AutoTokenizer.from_pretrained(directory / "llm")
    subjects = list(world)
    requests = parse_requests([fact_request(world, s, subjects[10:14]) for s in subjects[:3]])
    metrics, rows = evaluate(model, tok, requests)
    # nothing is edited: the old answers win everywhere
    assert metrics["efficacy"] == 0.0 and metrics["paraphrase"] == 0.0 and metrics["neighborhood"] == 1.0
    assert len(rows) == 3 and all(r["target_true_logprob"] > r["target_new_logprob"] for r in rows)
    assert metrics["fluency"] > 0
    # missing old answers are the model's own
    bare = parse_requests([{k: v for k, v in fact_request(world, subjects[0], []).items() if k != "target_true"}])
    assert fill_missing_targets(model, tok, bare)[0].target_true == world[subjects[0]]["city"]
    with pytest.raises(DataError, match="no target_true"):
        evaluate(model, tok, bare)
    table = format_table({"base": metrics})
    assert "efficacy" in table and "0.000" in table
