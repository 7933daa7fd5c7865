"""Fixtures for the editing tests: a word tokenizer and corpus file, and a tiny GPT-2 that knows a generated world of
facts (trained with the core trainer, as the quickstart does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from edit_helpers import corpus_texts


@pytest.fixture(scope="session")
def word_tok():
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    return train_word_tokenizer(corpus_texts())


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(corpus_texts()) + "\n")
    return path


@dataclass
class Facts:
    directory: Path  # the core trainer's output: an mmadapt checkpoint whose llm/ is a plain HF model
    world: dict
    corpus: Path  # the training text, one entry per line (the statistics corpus)


@pytest.fixture(scope="session")
def facts(tmp_path_factory) -> Facts:
    """A 2-layer GPT-2 trained by `mmadapt.train.run.train` on the quickstart's catalogue facts (24 people)."""
    from mmadapt.quickstart import edit as quick

    out = tmp_path_factory.mktemp("facts")
    world = quick.make_world(0, n_subjects=24)
    llm_dir, accuracy, _ = quick.train_base(out, quick.corpus(world), world, seed=0, hidden=64, layers=2, epochs=30)
    assert accuracy >= 0.95, f"the fixture model should know its facts, knows {accuracy:.2f}"
    (out / "corpus.txt").write_text("\n".join(quick.corpus(world)) + "\n")
    return Facts(llm_dir.parent, world, out / "corpus.txt")
