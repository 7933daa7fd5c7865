"""Epoch time of training with a frozen vision encoder, with and without the feature cache (`data.feature_cache`).

    python benchmarks/feature_cache.py [--n-train 256] [--epochs 4] [--image-size 64] [--vit-width 384]
                                       [--vit-depth 6] [--threads 1] [--repeats 1]

One generated `shapes` dataset, one frozen random-init timm ViT (heavy enough that encoding
matters) + MLP connector + tiny Llama; only the connector and the LLM train. Each variant is a
full `mmadapt.train.run.train` call in its own process, run in this order:
`off` (the encoder runs on every batch of every epoch), `cold` (an empty cache directory: every
image is encoded once to disk before the first epoch, then every epoch reads features) and `warm`
(a second run on the same directory, as a later epoch or stage: nothing is encoded). Printed:
the one-off fill time, the first epoch, the mean of the later epochs, the cache's size on disk,
and each variant's seconds per epoch as a ratio of `off` (a ratio < 1 means faster). With
--repeats > 1 the three runs repeat on a fresh cache directory and each variant's fastest run is
kept (on a shared machine the load drifts between runs). Each run uses --threads torch threads
(default 1: with more threads than free cores, OpenMP's waiting made a tiny model's steps 5-20x
slower here and the timings noise; 0 keeps torch's default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("off", "cold", "warm")
FORWARDED = ("n_train", "epochs", "batch", "image_size", "patch", "vit_width", "vit_depth", "hidden", "layers",
             "threads")  # flags a variant's process gets


def run_config(args: argparse.Namespace, root: Path, variant: str) -> dict:
    from mmadapt.quickstart.tiny import tiny_llm_config

    data = root / "data"
    vit = {"name": "timm", "model_name": "vit_small_patch16_224",
           "model_kwargs": {"img_size": args.image_size, "patch_size": args.patch, "embed_dim": args.vit_width,
                            "depth": args.vit_depth, "num_heads": max(1, args.vit_width // 64)}}
    image_tokens = (args.image_size // args.patch) ** 2
    return {
        "seed": 0, "output_dir": str(root / f"run-{variant}"),
        "model": {"llm": {"config": tiny_llm_config("llama", hidden=args.hidden, layers=args.layers, heads=4,
                                                    max_positions=image_tokens + 64),
                          "tokenizer": f"{data}/tokenizer"},
                  "encoders": {"image": vit}, "connectors": {"image": {"name": "mlp"}}},
        "data": {"train": f"{data}/train.jsonl", "max_length": image_tokens + 48,
                 "feature_cache": None if variant == "off" else str(root / "cache")},
        "training": {"batch_size": args.batch, "epochs": args.epochs, "lr": 1e-3, "logging_steps": 10_000,
                     "train_modules": ["connectors", "llm"], "warmup_ratio": 0.0, "scheduler": "constant",
                     "precision": "fp32"},
    }


def child(args: argparse.Namespace, root: Path, variant: str) -> dict:
    import torch
    from transformers import TrainerCallback

    from mmadapt.data import feature_cache
    from mmadapt.run_config import load_run
    from mmadapt.train.run import train

    if args.threads:
        torch.set_num_threads(args.threads)
    timing: dict = {"epochs": [], "fill": 0.0}
    warm = feature_cache.FeatureCache.warm
    caches: list = []  # every cache the run warms (the collator reads them; the model holds none)

    def timed_warm(self, *a, **kw):  # the one-off encode-to-disk pass that `train` runs before the first epoch
        caches.append(self)
        start = time.perf_counter()
        try:
            return warm(self, *a, **kw)
        finally:
            timing["fill"] += time.perf_counter() - start

    feature_cache.FeatureCache.warm = timed_warm

    class EpochClock(TrainerCallback):
        def on_epoch_begin(self, a, state, control, **kw):
            timing["t0"] = time.perf_counter()

        def on_epoch_end(self, a, state, control, **kw):
            timing["epochs"].append(time.perf_counter() - timing["t0"])

        def on_train_end(self, a, state, control, model=None, **kw):
            timing["encoded"] = sum(c.misses for c in caches)
            timing["read"] = sum(c.hits for c in caches)

    start = time.perf_counter()
    train(load_run(run_config(args, root, variant)), callbacks=[EpochClock()])
    timing["total"] = time.perf_counter() - start
    timing.pop("t0", None)
    return timing


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.is_dir() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=256, help="generated training images (one per example)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--vit-width", type=int, default=384, help="frozen ViT width (x depth 6: half a ViT-S)")
    parser.add_argument("--vit-depth", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128, help="tiny Llama hidden size")
    parser.add_argument("--layers", type=int, default=2, help="tiny Llama layers")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of off/cold/warm; fastest kept")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.variant:
        print("RESULT " + json.dumps(child(args, Path(args.root), args.variant)))
        return

    from mmadapt.config import DataConfig
    from mmadapt.data.loading import generate_data

    root = Path(tempfile.mkdtemp(prefix="mmadapt-fc-bench-"))
    try:
        generate_data(DataConfig(generate={"name": "shapes", "out": str(root / "data"), "seed": 0,
                                           "n_train": args.n_train, "n_eval": 1, "image_size": args.image_size}))
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            shutil.rmtree(root / "cache", ignore_errors=True)
            for variant in VARIANTS:  # cold fills the directory that warm then reuses
                cmd = [sys.executable, __file__, "--variant", variant, "--root", str(root)]
                for key in FORWARDED:
                    cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
                if variant not in results or sum(result["epochs"]) < sum(results[variant]["epochs"]):
                    results[variant] = result
        cache_mb = dir_mb(root / "cache")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    tokens = (args.image_size // args.patch) ** 2
    print(f"\nfeature cache: frozen ViT (width {args.vit_width} x depth {args.vit_depth}, {args.image_size}px / patch "
          f"{args.patch} = {tokens} tokens) + MLP + Llama {args.hidden} x {args.layers}; {args.n_train} images, "
          f"batch {args.batch}, {args.epochs} epochs, {args.threads or 'default'} thread(s), best of {args.repeats}; "
          f"cache on disk {cache_mb:.1f} MB")

    def per_epoch(r: dict) -> float:  # later epochs when there are any, else the only one
        later = r["epochs"][1:] or r["epochs"]
        return sum(later) / len(later)

    off = per_epoch(results["off"])
    labels = {"off": "cache off", "cold": "cache on, empty dir", "warm": "cache on, reused dir"}
    print(f"{'variant':<22}{'fill s':>8}{'epoch 1 s':>11}{'later s/epoch':>15}{'total s':>9}{'encoded':>9}"
          f"{'epoch / off':>13}{'(fill+E epochs) / off':>23}")
    for variant, r in results.items():
        epochs_plus_fill = r["fill"] + sum(r["epochs"])
        encoded = r["encoded"] if variant != "off" else args.n_train * args.epochs
        print(f"{labels[variant]:<22}{r['fill']:>8.2f}{r['epochs'][0]:>11.2f}{per_epoch(r):>15.2f}{r['total']:>9.1f}"
              f"{encoded:>9}"
              f"{per_epoch(r) / off:>13.3f}{epochs_plus_fill / sum(results['off']['epochs']):>23.3f}")
    print("encoded: images run through the encoder (off: every image, every epoch; on: each distinct image once); "
          "fill: the one-off encode-to-disk pass before epoch 1")


if __name__ == "__main__":
    main()
