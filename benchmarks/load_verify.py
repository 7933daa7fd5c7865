"""What refusing a half-written checkpoint costs: `MultimodalLM.from_pretrained` with and without re-hashing the
weight files against manifest.json (the check that catches a directory mixing two writes).

    python benchmarks/load_verify.py [--hidden 512] [--layers 8] [--vocab 32000] [--repeats 3]

A Llama-shaped text model with random weights is saved once (float32 safetensors, manifest); each load is
timed in this process, best of `--repeats` (the page cache is warm for both). Printed: the weight size,
both load times, SHA-256 throughput, and the ratio verified / unverified (1.0 = free).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from timing import best_of  # benchmarks/timing.py


def build(root: Path, args: argparse.Namespace) -> Path:
    import torch

    from mmadapt.config import ModelConfig, from_dict
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    words = [" ".join(f"w{i}" for i in range(j, args.vocab, 97)) for j in range(97)]
    train_word_tokenizer(words, root / "tok")
    spec = tiny_llm_config("llama", vocab_size=args.vocab, hidden=args.hidden, layers=args.layers, heads=8)
    torch.manual_seed(0)
    model = MultimodalLM.from_config(from_dict(ModelConfig, {"llm": {"config": spec, "tokenizer": str(root / "tok")}}))
    return model.save_pretrained(root / "ckpt")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mmadapt.lineage as lineage
    from mmadapt.lineage import hash_files
    from mmadapt.model import MultimodalLM

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build(Path(tmp), args)
        size = sum(p.stat().st_size for p in ckpt.rglob("*.safetensors"))
        verified = best_of(lambda: MultimodalLM.from_pretrained(ckpt), args.repeats)
        hashing = best_of(lambda: hash_files(ckpt), args.repeats)
        check = lineage.check_complete
        lineage.check_complete = lambda *a, **k: {}  # the same load with the check switched off
        try:
            unverified = best_of(lambda: MultimodalLM.from_pretrained(ckpt), args.repeats)
        finally:
            lineage.check_complete = check
    print(f"weights: {size / 1e6:.0f} MB (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab})")
    print(f"load, manifest verified:   {verified:.3f} s")
    print(f"load, unverified:          {unverified:.3f} s")
    print(f"SHA-256 alone:             {hashing:.3f} s ({size / 1e6 / hashing:.0f} MB/s)")
    print(f"ratio verified / unverified: {verified / unverified:.2f}")


if __name__ == "__main__":
    main()
