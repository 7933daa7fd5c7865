"""`mmadapt quickstart rag`: its invented world, the redrawn RA-DIT training data, the recipe's plumbing on a small
world, and (slow) the issue's targets on the real thing."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from mmadapt.quickstart.rag import (
    QUESTION, RELATIONS, invent_names, make_world, redraw, run, run_config, split, training_examples, write_corpus,
)

WORD = re.compile(r"[a-z]+")


def test_invented_names_are_distinct_made_up_words_and_seeded():
    names = invent_names(200, random.Random(0))
    assert len(set(names)) == 200
    assert all(WORD.fullmatch(n) and len(n) >= 4 for n in names)
    assert not set(names) & (set(RELATIONS) | set(WORD.findall(QUESTION)) | {"question"})
    assert names == invent_names(200, random.Random(0))
    assert names != invent_names(200, random.Random(1))


def test_world_has_one_fact_per_entity_about_other_entities():
    names, facts = make_world(60, seed=4)
    assert [f.subject for f in facts] == names  # every entity is the subject of exactly one fact
    assert len({f.id for f in facts}) == 60
    for f in facts:
        assert f.obj in names and f.obj != f.subject and f.relation in RELATIONS
        assert f.text == f"{f.obj} is the {f.relation} of {f.subject} ."
        assert f.question == f"what is the {f.relation} of {f.subject}"
    assert len(Counter(f.relation for f in facts)) == len(RELATIONS)
    assert make_world(60, seed=4) == (names, facts)
    assert make_world(60, seed=5)[0] != names


def test_redraw_renames_entities_one_to_one_and_consistently():
    names, facts = make_world(40, seed=0)
    a, b, c = facts[0], facts[1], facts[2]
    record = {"id": "x/0", "conversations": [
        {"from": "human", "value": f"{a.text}\n{b.text}\n{c.text}\nquestion : {a.question}"},
        {"from": "gpt", "value": a.obj}]}
    new = redraw(record, names, random.Random(7))
    assert new["id"] == "x/0" and [t["from"] for t in new["conversations"]] == ["human", "gpt"]
    old_words = [w for t in record["conversations"] for w in WORD.findall(t["value"])]
    new_words = [w for t in new["conversations"] for w in WORD.findall(t["value"])]
    assert len(old_words) == len(new_words)
    mapping: dict[str, str] = {}
    for old, renamed in zip(old_words, new_words):
        if old in names:
            assert renamed in names and mapping.setdefault(old, renamed) == renamed  # the same name everywhere
        else:
            assert renamed == old  # relation words, "is", "the", "of" ... stay
    assert len(set(mapping.values())) == len(mapping)  # one-to-one
    assert mapping != {n: n for n in mapping}
    # the renamed prompt still answers its question: the answer is the word before "is the R of SUBJECT"
    prompt, answer = new["conversations"][0]["value"], new["conversations"][1]["value"]
    subject = WORD.findall(prompt)[-1]
    assert re.search(rf"^{answer} is the {a.relation} of {subject} \.$", prompt, re.M)
    assert redraw(record, names, random.Random(7)) == new


@pytest.fixture(scope="module")
def world(build_index, tmp_path_factory):
    """A 30-entity world, its MiniLM index (built as the quickstart builds it) and its redrawn training data."""
    from mmadapt.rag.ingest import ingest
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever

    names, facts = make_world(30, seed=0)
    corpus = tmp_path_factory.mktemp("rag_world") / "corpus.jsonl"
    write_corpus(corpus, facts)
    retriever = Retriever(build_index(ingest([corpus]).documents), RetrieveConfig(k=3))
    train_facts, eval_facts = split(facts)
    return names, train_facts, eval_facts, training_examples(train_facts, names, retriever, seed=0, redraws=60)


def test_training_data_covers_every_name_and_every_example_is_answerable(world):
    names, train_facts, _, examples = world
    assert len(examples) == len(train_facts) * 60
    seen = Counter(w for e in examples for t in e["conversations"] for w in WORD.findall(t["value"]))
    assert set(names) <= set(seen)  # every entity (eval subjects and answers too) is a known token after training
    for e in examples:
        prompt, answer = (t["value"] for t in e["conversations"])
        lines = prompt.splitlines()
        assert len(lines) in (4, 5) and lines[-1].startswith("question : what is the ")  # 3 retrieved (+ 1 distractor)
        relation, subject = re.fullmatch(r"question : what is the (\w+) of (\w+)", lines[-1]).groups()
        assert f"{answer} is the {relation} of {subject} ." in lines[:-1]
    assert len({e["conversations"][1]["value"] for e in examples}) > len(names) // 2  # answers vary
    assert Counter(len(e["conversations"][0]["value"].splitlines()) for e in examples) == {4: len(examples) // 2,
                                                                                          5: len(examples) // 2}


def test_eval_facts_cannot_be_memorised_from_training(world):
    """Before redrawing, no eval fact is asked at all; after, an eval question recurs only with random answers."""
    names, train_facts, eval_facts, examples = world
    assert not {f.subject for f in train_facts} & {f.subject for f in eval_facts}
    truth = {f.question: f.obj for f in eval_facts}
    asked = [(q, e["conversations"][1]["value"]) for e in examples
             if (q := e["conversations"][0]["value"].splitlines()[-1].removeprefix("question : ")) in truth]
    assert len(asked) >= 30  # eval question shapes do recur in training ...
    true_answers = sum(answer == truth[q] for q, answer in asked)
    assert true_answers / len(asked) < 0.15  # ... with their true answer about as often as chance (1/29)


def test_run_config_is_a_valid_run(tmp_path):
    from mmadapt.run_config import load_run

    config = load_run(run_config(tmp_path, seed=0, epochs=1.0))
    assert config.data.train == str(tmp_path / "data" / "train.jsonl")
    assert config.model.llm.config["num_hidden_layers"] == 2


def test_small_world_runs_end_to_end(tmp_path):
    """Plumbing on a 30-entity world and a few steps (the targets need the full run, see the slow test)."""
    from mmadapt.errors import ConfigError
    from mmadapt.lineage import read_manifest

    with pytest.raises(ConfigError, match="no connector"):
        run(tmp_path / "x", connector="mlp")
    out = tmp_path / "quickstart-rag"
    metrics = run(out, n_entities=30, redraws=20, epochs=0.3)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("recall_at_5", "mrr", "answer_accuracy_with_rag", "answer_accuracy_without_rag"):
        assert isinstance(saved[key], float) and 0.0 <= saved[key] <= 1.0
    assert saved["eval_questions"] == 10.0 and saved["train_examples"] == 400.0
    assert saved["recall_at_5"] >= 0.9  # MiniLM finds the fact about the asked subject
    assert read_manifest(out / "index")["kind"] == "rag_index" and (out / "model" / "manifest.json").is_file()


@pytest.mark.slow
def test_quickstart_meets_its_targets(tmp_path):
    """The issue's targets: recall@5 >= 0.9, accuracy with RAG >= 0.8, without <= 0.3 (the time, under 10 minutes
    on 2 cores, is a figure in the README, not an assertion: timing belongs in benchmarks)."""
    from mmadapt.cli import main

    out = Path(tmp_path) / "quickstart-rag"
    assert main(["quickstart", "rag", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recall_at_5"] >= 0.9
    assert metrics["mrr"] > 0.5
    assert metrics["answer_accuracy_with_rag"] >= 0.8
    assert metrics["answer_accuracy_without_rag"] <= 0.3
