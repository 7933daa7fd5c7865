"""`mmadapt export --model DIR --out DIR [--merge-adapters | --format hf]`: call `mmadapt.export` or `mmadapt.hf.export`."""

from __future__ import annotations

import argparse


def export_cli(args: argparse.Namespace) -> int:
    if args.format == "hf":  # transformers' own layout (adapters always folded); LLaVA for composed models
        from mmadapt.hf.export import export_hf

        out = export_hf(args.model, args.out, overwrite=args.overwrite)
        print(f"exported {args.model} -> {out} (Hugging Face format)")
        return 0
    from mmadapt.export import export

    out = export(args.model, args.out, merge=args.merge_adapters, overwrite=args.overwrite)
    print(f"exported {args.model} -> {out}" + (" with adapters merged" if args.merge_adapters else ""))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a standalone model, optionally with LoRA adapters merged in")
    p.add_argument("--model", required=True, help="an mmadapt checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (written atomically, with manifest.json)")
    p.add_argument("--merge-adapters", action="store_true",
                   help="fold LoRA/DoRA adapters into the weights (a plain HF LLM in OUT/llm)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
    p.add_argument("--format", choices=("mmadapt", "hf"), default="mmadapt",
                   help="mmadapt: the mmadapt layout; hf: a directory transformers' AutoModelForImageTextToText and "
                        "AutoProcessor load (an HF VLM checkpoint in its own format; a composed model as LLaVA)")
    p.set_defaults(func=export_cli)
