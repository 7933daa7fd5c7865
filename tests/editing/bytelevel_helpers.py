"""A tiny Qwen2 with a byte-level BPE tokenizer (as Qwen2/GPT-2 tokenise: spaces glued to the next word, names in
several pieces), trained in-process on a catalogue of made-up facts, for the editing tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch

CITIES = ["paris", "rome", "oslo", "lima", "cairo", "tokyo"]
# Catalogue entries (the answer right after the name), as in the edit quickstart: a tiny model then recalls the fact
# at the subject's last token, where ROME writes; with "{} was born in" it looks the subject up from the last token.
TEMPLATES = ["The hometown of {}", "The birthplace of {}", "The home of {}"]


def make_facts(n: int = 24, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ru", "ten", "vas", "dor", "shi", "pel", "quo"]
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(syllables) for _ in range(3)).capitalize()
        if name not in names:
            names.append(name)
    return {name: CITIES[i % len(CITIES)] for i, name in enumerate(names)}


def bytelevel_tokenizer(texts: list[str], vocab_size: int = 320):
    """A Qwen2-style fast tokenizer trained on `texts`: byte-level BPE, no prefix space, <|endoftext|> as eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_qwen2(vocab_size: int, layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random tiny Qwen2 with the library's default initialisation (std 0.02), as a user builds from a config."""
    from tests.tiny import causal_lm

    return causal_lm("qwen2", vocab_size, hidden=hidden, layers=layers, seed=seed)


def fact_lines(facts: dict[str, str]) -> list[str]:
    return [t.format(name) + " " + city for name, city in facts.items() for t in TEMPLATES]


def train_facts(model, tok, facts: dict[str, str], steps: int = 300, lr: float = 3e-3) -> float:
    """Full-batch Adam on every fact line; returns the share of prompts whose greedy next token starts the answer."""
    lines = fact_lines(facts)
    enc = tok(lines, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    prompts = [(t.format(name), city) for name, city in facts.items() for t in TEMPLATES]
    correct = 0
    with torch.no_grad():
        for text, city in prompts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            predicted = tok.decode([int(model(input_ids=ids).logits[0, -1].argmax())])
            correct += predicted.strip() != "" and city.startswith(predicted.strip())
    return correct / len(prompts)


def save(model, tok, directory: Path) -> Path:
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
