"""Helpers for the editing tests: tiny random models of every family, a small generated corpus, fact requests."""

from __future__ import annotations


FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "qwen2", "mistral"]


def corpus_texts() -> list[str]:
    return [f"the {a} of {b} is in {c} ." for a in ("tower", "bridge", "castle") for b in ("alba", "bront", "cimo", "dara")
            for c in ("paris", "rome", "oslo")] + [f"{b} is a place ." for b in ("alba", "bront", "cimo", "dara")]


def tiny_model(family: str, vocab_size: int, layers: int = 2, hidden: int = 32, seed: int = 0):
    """A random tiny causal LM of `family`; a wide init (0.3) so a few hidden-state shifts can move its predictions."""
    from tests.tiny import causal_lm

    return causal_lm(family, vocab_size, hidden=hidden, layers=layers, seed=seed, initializer_range=0.3)


def fact_request(world: dict, subject: str, neighbours: list[str], relation: str = "city") -> dict:
    from mmadapt.quickstart.edit import RELATIONS

    templates, objects = RELATIONS[relation]
    true = world[subject][relation]
    new = next(o for o in objects if o != true)
    return {"prompt": templates[0], "subject": subject, "target_new": new, "target_true": true,
            "paraphrase_prompts": [t.format(subject) for t in templates[1:]],
            "neighborhood_prompts": [{"prompt": templates[0].format(n), "target": world[n][relation]} for n in neighbours]}
