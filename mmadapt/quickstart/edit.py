"""`mmadapt quickstart edit`: a tiny GPT-2 learns a generated world of facts, then ROME, MEMIT and FT-L rewrite some.

1. A world of made-up people (two-word names) with a city, a job and a language, each fact stated
   in four templates; a word-level tokenizer and a tiny GPT-2 trained on it with `mmadapt train`
   (format text) until it answers every template (up to three rounds).
2. Causal tracing of one fact (heat map `trace.png`).
3. ROME on single facts (each from the unedited model), MEMIT on a batch of 60, FT-L on the same
   single facts; efficacy on the edit template, paraphrase on the other three templates,
   neighbourhood on other people's facts of the same relation, fluency of generations.
`metrics.json`: efficacy / paraphrase / neighborhood / fluency (the worse of ROME and MEMIT),
seconds_per_edit, and the per-method breakdown (rome_*, memit_*, ft_*).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from mmadapt.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

RELATIONS: dict[str, tuple[list[str], list[str]]] = {
    "city": (["{} lives in the city of", "the home of {} is in", "{} has a house in", "everyone knows {} lives in"],
             ["paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "quito", "dakar", "hanoi", "perth", "kyiv"]),
    "job": (["{} works as a", "the job of {} is", "by trade , {} is a", "{} earns a living as a"],
            ["doctor", "pilot", "farmer", "lawyer", "baker", "writer", "nurse", "chef", "miner", "tailor"]),
}
N_SUBJECTS = 100
N_ROME = 10
N_MEMIT = 60
N_NEIGHBOURS = 5


def _names(rng: random.Random, n: int) -> list[str]:
    """`n` distinct made-up words of two or three syllables."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))))
    return sorted(names)


def make_world(seed: int) -> dict[str, dict[str, str]]:
    """{subject: {relation: object}} for N_SUBJECTS people named "first last": a few shared first names and a
    distinct family name each, so the subject's last token identifies it (as in "the Eiffel Tower")."""
    rng = random.Random(seed)
    first = _names(rng, 12)
    names = [f"{rng.choice(first)} {last}" for last in _names(rng, N_SUBJECTS)]
    rng.shuffle(names)
    return {name: {rel: rng.choice(objects) for rel, (_, objects) in RELATIONS.items()} for name in names}


def corpus(world: dict[str, dict[str, str]]) -> list[str]:
    return [f"{template.format(subject)} {obj} ." for subject, facts in world.items()
            for rel, obj in facts.items() for template in RELATIONS[rel][0]]


def edit_records(world: dict[str, dict[str, str]], subjects: list[str], seed: int) -> list[dict[str, Any]]:
    """One CounterFact-style request per subject: a relation, a new object, paraphrases, neighbours."""
    rng = random.Random(seed)
    records = []
    for subject in subjects:
        rel = rng.choice(sorted(RELATIONS))
        templates, objects = RELATIONS[rel]
        true = world[subject][rel]
        others = [s for s in world if s != subject]
        neighbours = rng.sample(others, N_NEIGHBOURS)
        records.append({
            "prompt": templates[0], "subject": subject, "target_new": rng.choice([o for o in objects if o != true]),
            "target_true": true,
            "paraphrase_prompts": [t.format(subject) for t in templates[1:]],
            "neighborhood_prompts": [{"prompt": templates[0].format(n), "target": world[n][rel]} for n in neighbours],
            "generation_prompts": [subject],
        })
    return records


@torch.no_grad()
def knowledge(model: torch.nn.Module, tok, world: dict[str, dict[str, str]]) -> float:
    """Share of (subject, relation, template) prompts whose greedy next word is the true object."""
    from mmadapt.editing.tokens import pad, pad_id
    from mmadapt.editing.tokens import Encoded

    items = [(template.format(s), obj) for s, facts in world.items() for rel, obj in facts.items() for template in RELATIONS[rel][0]]
    correct = 0
    for start in range(0, len(items), 256):
        chunk = items[start : start + 256]
        batch = [Encoded(tok(text)["input_ids"], -1, []) for text, _ in chunk]
        ids, mask = pad(batch, pad_id(tok), next(model.parameters()).device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(e.input_ids) - 1 for e in batch])
        predicted = logits[torch.arange(len(batch)), last].argmax(-1).tolist()
        correct += sum(tok.convert_ids_to_tokens(p) == obj for p, (_, obj) in zip(predicted, chunk))
    return correct / len(items)


def train_base(out: Path, lines: list[str], world: dict[str, dict[str, str]], seed: int) -> tuple[Path, float, float]:
    """Train the tiny GPT-2 with the core trainer until it knows the facts; (llm dir, accuracy, seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmadapt.config import load_run
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer
    from mmadapt.train.run import train

    train_word_tokenizer(lines, out / "tokenizer")
    data = out / "facts.jsonl"
    atomic_write_text(data, "".join(json.dumps({"text": line}) + "\n" for line in lines))
    llm = {**tiny_llm_config("gpt2", hidden=128, layers=4, heads=4, max_positions=64),
           "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    start, accuracy, previous = time.perf_counter(), 0.0, None
    for round_ in range(3):
        run_dir = out / f"base-{round_}"
        config = load_run({
            "model": {"llm": {"config": llm, "tokenizer": str(out / "tokenizer")}, "init_from": previous},
            "data": {"train": str(data), "format": "text", "max_length": 32},
            "training": {"epochs": 12 if round_ == 0 else 6, "batch_size": 32, "lr": 3e-3, "warmup_ratio": 0.05,
                         "scheduler": "cosine", "train_modules": ["llm"], "logging_steps": 100, "precision": "fp32"},
            "objective": {"name": "sft"}, "seed": seed + round_, "output_dir": str(run_dir),
        })
        train(config)
        model = AutoModelForCausalLM.from_pretrained(run_dir / "llm", dtype=torch.float32)
        accuracy = knowledge(model.eval(), AutoTokenizer.from_pretrained(run_dir / "llm"), world)
        logger.info("round %d: the model knows %.1f%% of the facts", round_, 100 * accuracy)
        previous = str(run_dir)
        if accuracy >= 0.99:
            break
    return Path(previous) / "llm", accuracy, time.perf_counter() - start
