"""Tokens/s of mmadapt's trainer against a minimal hand-written PyTorch loop: same model, data, batch.

Each variant runs in its own process (clean peak memory); the two alternate round by round and the median of the
per-round ratios ours/plain is printed last (target >= 0.95).
    python benchmarks/train_throughput.py [--steps 60] [--hidden 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(args: argparse.Namespace, workdir: Path):
    import torch

    from mmadapt.run_config import load_run
    from mmadapt.data.loading import generate_data, load_data
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder
    from mmadapt.train.freezing import apply_freezing

    data = workdir / "data"
    config = load_run({
        "seed": 0, "output_dir": str(workdir / "run"),
        "model": {"llm": {"config": tiny_llm_config("llama", hidden=args.hidden, layers=args.layers, heads=4),
                          "tokenizer": f"{data}/tokenizer"},
                  "encoders": {"image": tiny_vit_encoder(image_size=32, patch_size=8, width=64, depth=2)},
                  "connectors": {"image": {"name": "mlp"}}},
        "data": {"generate": {"name": "shapes", "out": str(data), "n_train": 1200, "n_eval": 10},
                 "train": f"{data}/train.jsonl", "max_length": 64},
        "training": {"batch_size": args.batch, "lr": 1e-3, "max_steps": args.steps + args.warmup, "logging_steps": 10_000,
                     "train_modules": ["encoders", "connectors", "llm"], "warmup_ratio": 0.0, "scheduler": "constant",
                     "max_grad_norm": 1.0},
    })
    generate_data(config.data)
    torch.manual_seed(0)
    model = MultimodalLM.from_config(config.model)
    apply_freezing(model, config.training.train_modules)
    train_data, _, collator, _ = load_data(model.tokenisation_spec(), config.data)
    return config, model, train_data, collator


def run_plain(args: argparse.Namespace, workdir: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from mmadapt.train.objectives.base import summed_nll

    config, model, train_data, collator = build(args, workdir)
    loader = DataLoader(train_data, batch_size=args.batch, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    model.train()
    tokens, step, start = 0, 0, None
    while step < args.steps + args.warmup:
        for batch in loader:
            if step == args.warmup:
                start = time.perf_counter()
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=batch.get("media"))
            nll, count = summed_nll(out.logits, batch["labels"])
            (nll / count).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup:
                tokens += int(batch["attention_mask"].sum())
            step += 1
            if step >= args.steps + args.warmup:
                break
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def run_ours(args: argparse.Namespace, workdir: Path) -> dict:
    from transformers import TrainerCallback

    from mmadapt.train.run import build_objective, training_arguments
    from mmadapt.train.trainer import MMTrainer

    config, model, train_data, collator = build(args, workdir)
    timing = {"tokens": 0}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                timing["start"] = time.perf_counter()
                timing["tokens0"] = state.num_input_tokens_seen

        def on_train_end(self, a, state, control, **kw):
            timing["seconds"] = time.perf_counter() - timing["start"]
            timing["tokens"] = state.num_input_tokens_seen - timing["tokens0"]

    targs = training_arguments(config, workdir / "ckpt", has_eval=False)
    targs.disable_tqdm = True
    trainer = MMTrainer(model=model, args=targs, train_dataset=train_data, data_collator=collator,
                        objective=build_objective(config), callbacks=[Clock()])
    trainer.train()
    return {"seconds": timing["seconds"], "tokens": timing["tokens"]}


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (each runs both variants)")
    parser.add_argument("--variant", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.variant:
        result = (run_ours if args.variant == "ours" else run_plain)(args, Path(args.workdir))
        result["peak_mb"] = peak_memory_mb()
        print("RESULT " + json.dumps(result))
        return
    workdir = Path(tempfile.mkdtemp(prefix="mmadapt-bench-"))
    results: dict[str, list[dict]] = {"plain": [], "ours": []}
    ratios = []
    for round_ in range(args.repeats):
        # interleaved round by round (the order flips each round), so a change in machine load hits both sides of
        # a round alike; the figure is the median of the per-round ratios, not a ratio of two lucky bests
        order = ("plain", "ours") if round_ % 2 == 0 else ("ours", "plain")
        for variant in order:
            cmd = [sys.executable, __file__, "--variant", variant, "--workdir", str(workdir), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--hidden", str(args.hidden), "--layers", str(args.layers),
                   "--batch", str(args.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            result["tokens_per_second"] = result["tokens"] / result["seconds"]
            results[variant].append(result)
        ratios.append(results["ours"][-1]["tokens_per_second"] / results["plain"][-1]["tokens_per_second"])
        print(f"round {round_}: ours/plain {ratios[-1]:.3f}", flush=True)
    print(f"\ntrain throughput: tiny VLM (llama hidden {args.hidden} x {args.layers} layers, ViT), batch {args.batch}, "
          f"{args.steps} timed steps, {args.repeats} interleaved rounds (medians)")
    print(f"{'variant':<24}{'tokens/s':>12}{'peak MB':>12}")
    for variant, label in (("plain", "hand-written loop"), ("ours", "mmadapt MMTrainer")):
        rate = statistics.median(r["tokens_per_second"] for r in results[variant])
        peak = statistics.median(r["peak_mb"] for r in results[variant])
        print(f"{label:<24}{rate:>12.0f}{peak:>12.0f}")
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio={statistics.median(ratios):.3f} (median of per-round ours/plain; target >= 0.95)")

if __name__ == "__main__":
    main()
