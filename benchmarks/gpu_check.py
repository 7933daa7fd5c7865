"""The GPU check's Python part: bf16 SFT tokens/s and MFU, the same packed with flash attention, QLoRA 4-bit steps.

Run through `benchmarks/gpu_check.sh` on a CUDA machine (it refuses without one), or here:
`python benchmarks/gpu_check.py --dry-run` (a tiny model on CPU, fp32, a few steps: proves the path end to end).
Full size: a random-init LLM shaped like Qwen2.5-0.5B (hidden 896, 24 layers, MLP 4864, 14 heads, 2 KV heads)
with a SigLIP-base-sized vision tower (ViT-B/16 at 224 px: width 768, 12 layers, 196 tokens; timm's
`vit_base_patch16_siglip_224`, random weights) and an MLP connector, everything trained, through mmadapt's own
trainer on generated image conversations. MFU = model FLOPs (6 x parameters x tokens through each tower; QLoRA:
4 x, no weight gradients for the frozen base) / seconds / the GPU's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}
QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
              "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096,
              "tie_word_embeddings": True, "rope_theta": 1000000.0}
SIGLIP_BASE = {"name": "timm", "model_name": "vit_base_patch16_siglip_224", "pretrained": False}


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_config(root: Path, args: argparse.Namespace, variant: str) -> dict:
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder

    data = root / "data"
    if args.dry_run:
        llm = tiny_llm_config("qwen2", hidden=64, layers=2, heads=4)
        encoder = tiny_vit_encoder(image_size=32, patch_size=8, width=64, depth=2)
    else:
        llm, encoder = dict(QWEN25_05B), dict(SIGLIP_BASE)
    attn = "flash_attention_2" if variant == "packed" and importlib.util.find_spec("flash_attn") else "sdpa"
    config = {
        "seed": 0, "output_dir": str(root / variant),
        "model": {"llm": {"config": llm, "tokenizer": f"{data}/tokenizer", "attn_implementation": attn,
                          "dtype": "float32" if args.dry_run or variant != "qlora" else "bfloat16"},
                  "encoders": {"image": encoder}, "connectors": {"image": {"name": "mlp"}}},
        "data": {"generate": {"name": "shapes", "out": str(data), "n_train": args.samples, "n_eval": 4},
                 "train": f"{data}/train.jsonl", "max_length": args.max_length, "packing": variant == "packed"},
        "training": {"batch_size": args.batch, "lr": 1e-4, "max_steps": args.steps + args.warmup, "logging_steps": 10_000,
                     "train_modules": ["llm"] if variant == "qlora" else ["encoders", "connectors", "llm"],
                     "warmup_ratio": 0.0, "scheduler": "constant", "precision": "fp32" if args.dry_run else "bf16",
                     "threads": 1 if args.dry_run else None,
                     # the images are read and transformed per step: workers keep the GPU fed (the first H200 run,
                     # with none, spent ~280 ms per 3.4k-token step, 3% MFU)
                     "dataloader_num_workers": 0 if args.dry_run else 4},
    }
    if variant == "qlora":
        config["peft"] = {"r": 16, "alpha": 32, "dropout": 0.0, "quantization": "4bit"}
    return config, attn


def run_variant(root: Path, args: argparse.Namespace, variant: str) -> dict:
    import torch
    from transformers import TrainerCallback

    from mmadapt.run_config import load_run
    from mmadapt.data.loading import generate_data, load_data
    from mmadapt.model import MultimodalLM
    from mmadapt.train.freezing import apply_freezing
    from mmadapt.train.peft import apply_peft
    from mmadapt.train.run import build_objective, training_arguments
    from mmadapt.train.trainer import MMTrainer

    spec, attn = run_config(root, args, variant)
    config = load_run(spec)
    generate_data(config.data)
    if variant == "qlora":  # bitsandbytes quantises at load time: QLoRA starts from a saved (random-init) LLM
        spec["model"]["llm"] = {**spec["model"]["llm"], "name_or_path": str(saved_llm(root, spec)), "config": None}
        config = load_run(spec)
    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # per variant, not the largest of all so far
    model = MultimodalLM.from_config(config.model)
    if config.peft is not None:
        apply_peft(model, config.peft)
    apply_freezing(model, config.training.train_modules)
    train_data, _, collator, _ = load_data(model.tokenisation_spec(), config.data)
    clock: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.update(start=time.perf_counter(), tokens0=state.num_input_tokens_seen)

        def on_train_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            clock.update(seconds=time.perf_counter() - clock["start"], tokens=state.num_input_tokens_seen - clock["tokens0"])

    targs = training_arguments(config, root / variant / "ckpt", has_eval=False)
    targs.disable_tqdm = True
    trainer = MMTrainer(model=model, args=targs, train_dataset=train_data, data_collator=collator,
                        objective=build_objective(config), callbacks=[Clock()])
    trainer.train()
    llm_params = sum(p.numel() for p in model.llm.parameters())
    vision_params = sum(p.numel() for p in model.encoders.parameters()) + sum(p.numel() for p in model.connectors.parameters())
    images = args.steps * args.batch  # one image per generated sample (packed rows hold several samples: a lower bound)
    return {"variant": variant, "attn": attn, "seconds": clock["seconds"], "tokens": clock["tokens"],
            "llm_params": llm_params, "vision_params": vision_params, "image_tokens": _image_tokens(model),
            "images": images, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def saved_llm(root: Path, spec: dict) -> Path:
    """A random-init LLM of the run's `llm.config` saved with save_pretrained, as a user's base checkpoint would be."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = root / "qlora-base"
    if not (out / "config.json").is_file():
        llm = dict(spec["model"]["llm"]["config"])
        tokenizer = AutoTokenizer.from_pretrained(spec["model"]["llm"]["tokenizer"])
        config = AutoConfig.for_model(llm.pop("model_type"), **{**llm, "vocab_size": len(tokenizer)})
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def _image_tokens(model) -> int:
    encoder = model.encoders["image"]
    return int(getattr(encoder, "num_features", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="a tiny model on CPU: proves the path, measures nothing")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 30; dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; dry run 1)")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default 16; dry run 2)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="tokens per row (packed rows fill it; a 0.5B model needs tens of thousands of tokens per "
                             "step, e.g. --batch 32 --max-length 2048, before GPU time outweighs per-step overheads)")
    parser.add_argument("--variants", default="bf16,packed,qlora")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in the built-in table")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run it on a GPU machine, or pass --dry-run for the CPU smoke run")
    args.steps = args.steps or (2 if args.dry_run else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)
    args.batch = args.batch or (2 if args.dry_run else 16)
    args.samples = (args.steps + args.warmup) * args.batch + 8
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu (dry run)"
    peak = None if args.dry_run else peak_flops(device, args.peak_tflops)
    results = []
    with tempfile.TemporaryDirectory(prefix="mmadapt-gpu-check-") as tmp:
        for variant in args.variants.split(","):
            if variant == "qlora" and (args.dry_run or not importlib.util.find_spec("bitsandbytes")):
                print(f"qlora: skipped ({'dry run: bitsandbytes 4-bit needs CUDA' if args.dry_run else 'pip install bitsandbytes'})")
                continue
            results.append(run_variant(Path(tmp), args, variant))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(f"device: {device}; peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else f"device: {device}; peak FLOP/s unknown")
    for r in results:
        per_token = 4 if r["variant"] == "qlora" else 6
        flops = per_token * r["llm_params"] * r["tokens"]
        if r["images"]:
            flops += per_token * r["vision_params"] * r["images"] * r["image_tokens"]
        mfu = f"{100 * flops / r['seconds'] / peak:.1f}%" if peak else "-"
        memory = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "-"
        step_ms = 1000 * r["seconds"] / args.steps
        print(f"{r['variant']:<7} attn {r['attn']:<18} {r['tokens'] / r['seconds']:>10,.0f} tokens/s  MFU {mfu:>6}  "
              f"{step_ms:,.0f} ms/step of {r['tokens'] / args.steps:,.0f} tokens  "
              f"peak memory {memory}  (LLM {r['llm_params'] / 1e6:.0f}M + vision {r['vision_params'] / 1e6:.0f}M parameters)")
    print(json.dumps({r["variant"]: round(r["tokens"] / r["seconds"], 1) for r in results}))


if __name__ == "__main__":
    main()
