"""Shared fixtures for the editing tests: tiny random models of every family, and a tiny GPT-2 that knows a
generated world of facts (trained with the core trainer, as the quickstart does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "qwen2", "mistral"]


def corpus_texts() -> list[str]:
    return [f"the {a} of {b} is in {c} ." for a in ("tower", "bridge", "castle") for b in ("alba", "bront", "cimo", "dara")
            for c in ("paris", "rome", "oslo")] + [f"{b} is a place ." for b in ("alba", "bront", "cimo", "dara")]


@pytest.fixture(scope="session")
def word_tok():
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    return train_word_tokenizer(corpus_texts())


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(corpus_texts()) + "\n")
    return path


def tiny_model(family: str, vocab_size: int, layers: int = 2, hidden: int = 32, seed: int = 0):
    """A random tiny causal LM of `family`; a wide init (0.3) so a few hidden-state shifts can move its predictions."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmadapt.quickstart.tiny import tiny_llm_config

    torch.manual_seed(seed)
    spec = {**tiny_llm_config(family, vocab_size=vocab_size, hidden=hidden, layers=layers), "initializer_range": 0.3}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec)).eval()


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


def fact_request(world: dict, subject: str, neighbours: list[str], relation: str = "city") -> dict:
    from mmadapt.quickstart.edit import RELATIONS

    templates, objects = RELATIONS[relation]
    true = world[subject][relation]
    new = next(o for o in objects if o != true)
    return {"prompt": templates[0], "subject": subject, "target_new": new, "target_true": true,
            "paraphrase_prompts": [t.format(subject) for t in templates[1:]],
            "neighborhood_prompts": [{"prompt": templates[0].format(n), "target": world[n][relation]} for n in neighbours]}
