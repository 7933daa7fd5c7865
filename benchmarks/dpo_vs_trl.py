"""DPO training speed of mmadapt's trainer against TRL's DPOTrainer: same model, pairs, batch, steps, beta.

    pip install 'mmadapt[bench]'   # TRL (optional: without it only mmadapt runs)
    python benchmarks/dpo_vs_trl.py [--steps 40] [--hidden 256] [--layers 4] [--batch 8]

A Llama-shaped model with random weights is saved once (a plain HF directory with a word-level
tokenizer and a ChatML template); both trainers fine-tune all of it with a frozen reference copy,
on the same conversational pairs, gradient checkpointing off on both sides (TRL's default is on), one forward of
chosen+rejected rows and a no-grad reference forward on both. Both project only what they score through the LM
head: mmadapt passes HF's `logits_to_keep` (the positions of supervised tokens); TRL's fused LM head
(`add_fused_lm_head`) scores only labelled positions on Triton devices (GPUs) and every position elsewhere (CPU).
Each run is its own process; the two alternate round by round (order flipped each round) and the median of the
per-round ratios mmadapt / TRL (steps/s; > 1: mmadapt is faster) is printed last as `ratio=`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def build(root: Path, args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    rng = random.Random(0)
    lexicon = [f"w{i}" for i in range(args.vocab)]
    tokenizer = train_word_tokenizer([" ".join(lexicon)], root / "model")
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=args.hidden,
                                  num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                                  num_key_value_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                                  max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    with (root / "pairs.jsonl").open("w") as f:
        for _ in range(args.pairs):
            prompt = " ".join(rng.choices(lexicon, k=args.words))
            chosen, rejected = (" ".join(rng.choices(lexicon, k=args.words // 2)) for _ in range(2))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def run_ours(root: Path, args: argparse.Namespace) -> dict:
    from mmadapt.run_config import load_run
    from mmadapt.train.run import train

    config = load_run({
        "seed": 0, "output_dir": str(root / "ours"),
        "model": {"llm": {"name_or_path": str(root / "model")}},
        "data": {"train": str(root / "pairs.jsonl"), "format": "preference", "max_length": 512},
        "objective": {"name": "dpo", "beta": 0.1, "reference": "copy"},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "lr": 1e-4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "train_modules": ["llm"], "logging_steps": args.steps,
                     "precision": "fp32"},
    })
    metrics = train(config, overwrite=True)  # each round reuses the output directory
    return {"steps_per_second": metrics["train_steps"] / metrics["train_seconds"], "loss": metrics["train_loss"]}


def run_trl(root: Path, args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    # Conversational form, so TRL renders the same chat template mmadapt uses.
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    config = DPOConfig(output_dir=str(root / "trl"), per_device_train_batch_size=args.batch, max_steps=args.steps,
                       learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, beta=0.1, max_length=512,
                       logging_steps=args.steps, save_strategy="no", report_to="none", seed=0,
                       use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, dataloader_num_workers=0,
                       # TRL turns gradient checkpointing on by default; mmadapt's run has it off: like with like
                       gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    return {"steps_per_second": result.global_step / result.metrics["train_runtime"], "loss": result.training_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000, help="words in the generated vocabulary")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--words", type=int, default=32, help="prompt length in words (completions: half)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs both trainers)")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (run_ours if args.child == "ours" else run_trl)(Path(args.root), args)
        print(json.dumps(result))
        return

    try:
        import trl  # noqa: F401
        variants = ["ours", "trl"]
    except ImportError:
        print("TRL is not installed (pip install 'mmadapt[bench]'): timing mmadapt only")
        variants = ["ours"]
    rounds: dict[str, list[dict]] = {variant: [] for variant in variants}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="mmadapt-dpo-bench-") as tmp:
        root = Path(tmp)
        build(root, args)
        for round_ in range(args.rounds):
            # interleaved, order flipped each round: a change in machine load hits both sides of a round alike
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                cmd = [sys.executable, __file__, "--child", variant, "--root", str(root)]
                for key in ("hidden", "layers", "vocab", "pairs", "words", "steps", "batch"):
                    cmd += [f"--{key}", str(getattr(args, key))]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"the {variant} run failed:\n{done.stderr[-3000:]}")
                output = done.stdout
                rounds[variant].append(json.loads(output.strip().splitlines()[-1]))
            if "trl" in rounds:
                ratios.append(rounds["ours"][-1]["steps_per_second"] / rounds["trl"][-1]["steps_per_second"])
                print(f"round {round_}: mmadapt/TRL {ratios[-1]:.3f}", flush=True)

    print(f"DPO, full fine-tuning with a frozen reference copy: Llama hidden {args.hidden} x {args.layers} layers, "
          f"vocabulary {args.vocab}, {args.batch} pairs/step, {args.steps} steps, {args.rounds} interleaved rounds (medians)")
    print(f"{'trainer':<10}{'steps/s':>10}{'train loss':>12}")
    for name, runs in rounds.items():
        print(f"{name:<10}{statistics.median(r['steps_per_second'] for r in runs):>10.2f}{runs[-1]['loss']:>12.4f}")
    if ratios:
        print(f"ratio={statistics.median(ratios):.3f}")

if __name__ == "__main__":
    main()
