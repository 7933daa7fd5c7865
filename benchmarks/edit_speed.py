"""Seconds per ROME edit and per MEMIT batch, with and without cached second-moment statistics.

Run: `python benchmarks/edit_speed.py [--hidden 256 --layers 6 --batch 20 --texts 4000]`. A GPT-2-style
model with random weights and a generated corpus (speed does not depend on what the model knows);
"cold" computes C = E[k kᵀ] from the corpus, "disk" reads it from the cache directory in a fresh
StatsCache (a new process), "memory" reuses the same StatsCache object. Prints the ratios.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch


def world(n_subjects: int, seed: int) -> tuple[list[str], list[dict]]:
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    names = sorted({"".join(rng.choice(syllables) for _ in range(3)) for _ in range(4 * n_subjects)})[:n_subjects]
    cities = ["paris", "rome", "oslo", "lima", "cairo", "tokyo"]
    texts = [f"the hometown of {name} is {rng.choice(cities)} and the river {rng.choice(names)} flows by ." for name in names]
    requests = [{"prompt": "the hometown of {}", "subject": name, "target_new": rng.choice(cities)} for name in names]
    return texts, requests


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmadapt.editing.common import restored
    from mmadapt.editing.memit import MemitHParams, apply_memit
    from mmadapt.editing.requests import parse_requests
    from mmadapt.editing.rome import RomeHParams, apply_rome
    from mmadapt.editing.stats import StatsCache, StatsConfig
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=20, help="MEMIT batch size")
    parser.add_argument("--texts", type=int, default=4000, help="corpus texts for the statistics")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    texts, records = world(max(args.texts, args.batch + args.repeats), seed=0)
    tok = train_word_tokenizer(texts)
    spec = {**tiny_llm_config("gpt2", vocab_size=len(tok), hidden=args.hidden, layers=args.layers, max_positions=64),
            "initializer_range": 0.1}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec)).eval()
    requests = parse_requests(records[: args.batch + args.repeats])
    edited = [n for n, _ in model.named_parameters() if ".mlp.c_proj." in n]

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts[: args.texts]) + "\n")
        stats = StatsConfig(corpus=str(corpus), max_tokens=10**9)
        rome_hp = RomeHParams(layer=args.layers // 3, stats=stats)
        memit_hp = MemitHParams(layers=list(range(1, min(args.layers, 4))), stats=stats)

        def rome(request, cache):
            with restored(model, edited):
                apply_rome(model, tok, [request], rome_hp, cache=cache)

        def memit(cache):
            with restored(model, edited):
                apply_memit(model, tok, requests[: args.batch], memit_hp, cache=cache)

        cold_dir = Path(tmp) / "cold"
        rome_cold = [timed(lambda: rome(requests[i], StatsCache(cold_dir / f"rome{i}"))) for i in range(args.repeats)]
        shared = StatsCache(Path(tmp) / "warm")
        rome(requests[0], shared)  # fills the cache
        rome_disk = [timed(lambda: rome(requests[i], StatsCache(Path(tmp) / "warm"))) for i in range(args.repeats)]
        rome_memory = [timed(lambda: rome(requests[i], shared)) for i in range(args.repeats)]
        memit_cold = timed(lambda: memit(StatsCache(cold_dir / "memit")))
        memit(shared)
        memit_disk = timed(lambda: memit(StatsCache(Path(tmp) / "warm")))
        memit_memory = timed(lambda: memit(shared))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    print(f"GPT-2 {args.layers} layers x {args.hidden}, {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"statistics over {args.texts} texts; torch threads {torch.get_num_threads()}")
    print(f"{'':28}{'cold (compute C)':>18}{'cached on disk':>16}{'cached in memory':>18}")
    print(f"{'ROME, s per edit':28}{mean(rome_cold):>18.3f}{mean(rome_disk):>16.3f}{mean(rome_memory):>18.3f}")
    print(f"{f'MEMIT, s per batch of {args.batch}':28}{memit_cold:>18.3f}{memit_disk:>16.3f}{memit_memory:>18.3f}")
    print(f"{'MEMIT, s per edit':28}{memit_cold / args.batch:>18.3f}{memit_disk / args.batch:>16.3f}{memit_memory / args.batch:>18.3f}")
    print(f"ratio cold / cached (disk): ROME {mean(rome_cold) / mean(rome_disk):.2f}x, MEMIT {memit_cold / memit_disk:.2f}x")


if __name__ == "__main__":
    main()
