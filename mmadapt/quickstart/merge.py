"""`mmadapt quickstart merge`: one tiny base, two specialists fine-tuned apart, merged into one model by each method.

1. Two generated tasks in disjoint prompt formats and vocabularies: A "the capital of <country> is
   <city> ." and B "the <animal> makes the sound <sound> .", 20 made-up facts each.
2. A tiny Llama is pretrained with `mmadapt train` on both formats: the task subjects with random
   answers (the words and formats, not the facts) and 40 other facts per format (a recall circuit
   the specialists can reuse): the shared base.
3. Specialist A and specialist B are fine-tuned from the base (`model.init_from`, small LR), each
   on its own task only.
4. Both are merged by every method (`mmadapt.merge.run_merge`, streamed, with lineage), and every
   model answers every fact of both tasks (greedy next word).
`metrics.json`: base_/model_a_/model_b_/<method>_ task_a / task_b accuracies, <method>_retained_a/b
(merged accuracy / the specialist's), and retained_a, retained_b of the best method.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from mmadapt.eval.metrics import accuracy as exact_accuracy
from mmadapt.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

N_FACTS = 20  # per task: what the specialists learn (more facts per tiny model: more interference when merged)
N_KNOWN = 40  # per task: other facts of the same format the base learns, so it has a recall circuit to reuse
KNOWN_REPEATS = 4
RANDOM_ANSWERS = 4  # pretraining lines per task subject, each with a random answer: the words, not the facts
TEMPLATES = {"a": "the capital of {} is {} .", "b": "the {} makes the sound {} ."}

# method -> merge config (base_model and models filled in); tuned once for this task, shown as examples
METHODS: dict[str, dict[str, Any]] = {
    "linear": {"method": "linear"},
    "slerp": {"method": "slerp", "parameters": {"t": 0.5}},
    "task_arithmetic": {"method": "task_arithmetic", "parameters": {"scaling": 0.8}},
    "ties": {"method": "ties", "parameters": {"density": 0.5, "scaling": 1.0, "normalize": False}},
    "dare_linear": {"method": "dare_linear", "parameters": {"density": 0.7, "scaling": 0.8}},
    "dare_ties": {"method": "dare_ties", "parameters": {"density": 0.7, "scaling": 1.0, "normalize": False}},
}


def _words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` new pronounceable made-up words (one token each in the word-level tokenizer)."""
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "l", "s"]
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(2)) + rng.choice(codas)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def make_tasks(seed: int) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """({task: [(prompt, answer)]}, pretraining lines)."""
    rng = random.Random(seed)
    taken = {w for t in TEMPLATES.values() for w in t.split()}
    tasks, base_lines = {}, []
    for task, template in TEMPLATES.items():
        subjects, objects, known = _words(rng, N_FACTS, taken), _words(rng, N_FACTS, taken), _words(rng, N_KNOWN, taken)
        truth = objects[:]
        rng.shuffle(truth)
        prompt = template.rsplit(" {} .", 1)[0]
        tasks[task] = [(prompt.format(s), o) for s, o in zip(subjects, truth)]
        base_lines += [template.format(s, rng.choice(objects)) for s in subjects for _ in range(RANDOM_ANSWERS)]
        base_lines += [template.format(s, rng.choice(objects)) for s in known] * KNOWN_REPEATS
    rng.shuffle(base_lines)
    return tasks, base_lines


@torch.no_grad()
def accuracy(model: torch.nn.Module, tokenizer: Any, facts: list[tuple[str, str]]) -> float:
    """Share of prompts whose greedy next word is the fact's answer."""
    encoded = [tokenizer(prompt)["input_ids"] for prompt, _ in facts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])  # [N, T], left padded
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]  # [N, V]
    predicted = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    return exact_accuracy(predicted, [answer for _, answer in facts], normalize=False)


def _train(out: Path, lines: list[str], tokenizer_dir: Path, init_from: Path | None, seed: int, epochs: float,
           lr: float, batch_size: int) -> Path:
    """One `mmadapt train` run of a tiny Llama on text lines (loss on every token); returns the checkpoint."""
    from mmadapt.run_config import load_run
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.train.run import train

    data = out.with_suffix(".jsonl")
    atomic_write_text(data, "".join(json.dumps({"text": line}) + "\n" for line in lines))
    config = load_run({
        "model": {"llm": {"config": tiny_llm_config("llama", hidden=128, layers=2, heads=4, max_positions=32),
                          "tokenizer": str(tokenizer_dir)},
                  "init_from": str(init_from) if init_from else None},
        "data": {"train": str(data), "format": "text", "max_length": 16},
        "training": {"threads": 1, "epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_ratio": 0.05, "scheduler": "cosine",
                     "train_modules": ["llm"], "logging_steps": 50, "precision": "fp32", "weight_decay": 0.0},
        "objective": {"name": "sft"}, "seed": seed, "output_dir": str(out),
    })
    train(config, overwrite=True)  # a re-run replaces its own earlier outputs
    return out


def _load(checkpoint: Path) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = checkpoint / "llm"
    return AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(llm)


def evaluate(checkpoint: Path, tasks: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    model, tokenizer = _load(checkpoint)
    return {task: accuracy(model, tokenizer, facts) for task, facts in tasks.items()}


def print_table(rows: dict[str, dict[str, float]], specialists: dict[str, float]) -> None:
    print("\nquickstart merge: accuracy on both tasks (retained = merged / specialist)")
    print(f"{'model':<18} {'task A':>7} {'task B':>7} {'retained A':>11} {'retained B':>11}")
    print("-" * 58)
    for name, acc in rows.items():
        retained = (f"{acc['a'] / specialists['a']:>11.2f} {acc['b'] / specialists['b']:>11.2f}"
                    if name not in ("base", "model_a", "model_b") else f"{'':>11} {'':>11}")
        print(f"{name:<18} {acc['a']:>7.2f} {acc['b']:>7.2f} {retained}")
    print("-" * 58)


def run(out: Path, connector: str | None = None, seed: int = 0) -> dict[str, float]:
    """Pretrain, fine-tune two specialists, merge with every method, evaluate; writes out/metrics.json."""
    from mmadapt.errors import ConfigError

    if connector is not None:
        raise ConfigError("the merge quickstart is text-only; --connector does not apply")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    # one thread: at hidden 128 intra-op parallelism costs more than it gives (10x slower on a busy 2-core box)
    torch.set_num_threads(1)
    try:
        return _run(out, seed, start)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, seed: int, start: float) -> dict[str, float]:
    from mmadapt.merge.merge import load_merge_config, run_merge
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    torch.manual_seed(seed)
    tasks, base_lines = make_tasks(seed)
    fact_lines = {task: [f"{p} {a} ." for p, a in facts] for task, facts in tasks.items()}
    tokenizer_dir = out / "tokenizer"
    train_word_tokenizer(base_lines + fact_lines["a"] + fact_lines["b"], tokenizer_dir)

    base = _train(out / "base", base_lines, tokenizer_dir, None, seed, epochs=20, lr=3e-3, batch_size=32)
    specialists = {task: _train(out / f"model_{task}", lines, tokenizer_dir, base, seed + 1 + i, epochs=60, lr=1e-3,
                                batch_size=8)
                   for i, (task, lines) in enumerate(fact_lines.items())}
    rows = {"base": evaluate(base, tasks), **{f"model_{t}": evaluate(c, tasks) for t, c in specialists.items()}}
    best = {t: max(rows[f"model_{t}"][t], 1e-9) for t in tasks}

    merge_seconds: dict[str, float] = {}
    for name, spec in METHODS.items():
        config = {**spec, "base_model": str(base), "models": [{"model": str(specialists["a"])},
                                                              {"model": str(specialists["b"])}]}
        if name == "slerp":
            config.pop("base_model")
        merged = out / f"merged_{name}"
        merge_seconds[name] = run_merge(load_merge_config(config), merged, overwrite=True)["seconds"]
        rows[name] = evaluate(merged, tasks)

    metrics: dict[str, float] = {}
    for name, acc in rows.items():
        metrics[f"{name}_task_a"], metrics[f"{name}_task_b"] = acc["a"], acc["b"]
        if name in METHODS:
            metrics[f"{name}_retained_a"] = acc["a"] / best["a"]
            metrics[f"{name}_retained_b"] = acc["b"] / best["b"]
    winner = max(METHODS, key=lambda m: (min(metrics[f"{m}_retained_a"], metrics[f"{m}_retained_b"]),
                                         metrics[f"{m}_retained_a"] + metrics[f"{m}_retained_b"]))
    metrics["retained_a"] = metrics[f"{winner}_retained_a"]
    metrics["retained_b"] = metrics[f"{winner}_retained_b"]
    metrics["best_method_index"] = float(list(METHODS).index(winner))
    metrics["merge_seconds_mean"] = sum(merge_seconds.values()) / len(merge_seconds)
    metrics["seconds"] = time.perf_counter() - start
    print_table(rows, best)
    print(f"best method: {winner} (retained A {metrics['retained_a']:.2f}, B {metrics['retained_b']:.2f}); "
          f"merged models in {out}/merged_*; total {metrics['seconds']:.0f} s")
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
