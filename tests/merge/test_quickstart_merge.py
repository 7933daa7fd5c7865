"""`mmadapt quickstart merge`: the generated tasks, the accuracy bookkeeping, and (slow) the full run meeting its target."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mmadapt.quickstart import merge as qs


def test_tasks_use_disjoint_words_and_formats():
    tasks, base_lines = qs.make_tasks(0)
    assert set(tasks) == {"a", "b"} and all(len(facts) == qs.N_FACTS for facts in tasks.values())
    words = {t: {w for p, a in facts for w in (p.split()[-2] if t == "a" else p.split()[1], a)} for t, facts in tasks.items()}
    assert not words["a"] & words["b"]  # subjects and answers of the two tasks never overlap
    assert all(p.startswith("the capital of") for p, _ in tasks["a"])
    assert all(p.endswith("makes the sound") for p, _ in tasks["b"])
    # the base sees every task subject, but never with a consistent answer to memorise
    for prompt, answer in tasks["a"][:5]:
        seen = [line.split()[-2] for line in base_lines if line.startswith(prompt + " ")]
        assert len(seen) == qs.RANDOM_ANSWERS
    assert qs.make_tasks(0) == (tasks, base_lines)  # reproducible from the seed


class _Echo(torch.nn.Module):
    """Predicts, after each prompt, the token whose id is the prompt's last real token id + 1 (left padding aware)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask, position_ids):
        assert (position_ids[attention_mask.bool()] >= 0).all()
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, ((input_ids + 1) % self.vocab).unsqueeze(-1), 1.0)
        return SimpleNamespace(logits=logits)


def test_accuracy_scores_the_greedy_next_word_of_left_padded_prompts(tmp_path):
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    tok = train_word_tokenizer(["alpha beta gamma delta epsilon zeta"])
    vocab = tok.get_vocab()
    after = {w: tok.convert_ids_to_tokens(vocab[w] + 1) for w in ("alpha", "gamma", "epsilon")}
    facts = [("beta alpha", after["alpha"]), ("gamma", after["gamma"]), ("zeta delta epsilon", "beta")]
    assert after["epsilon"] != "beta"
    assert qs.accuracy(_Echo(len(tok)), tok, facts) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_quickstart_merge_meets_its_target(tmp_path):
    metrics = qs.run(tmp_path / "qs")
    saved = json.loads((tmp_path / "qs" / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("model_a_task_a", "model_a_task_b", "model_b_task_a", "model_b_task_b", "base_task_a", "base_task_b",
                "ties_retained_a", "ties_retained_b", "retained_a", "retained_b"):
        assert key in metrics
    assert metrics["model_a_task_a"] >= 0.9 and metrics["model_b_task_b"] >= 0.9
    assert metrics["base_task_a"] <= 0.3 and metrics["model_a_task_b"] <= 0.3  # specialists know only their task
    assert metrics["retained_a"] >= 0.8 and metrics["retained_b"] >= 0.8
