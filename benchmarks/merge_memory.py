"""Peak memory and time of a streamed (out-of-core) merge of N models against loading them all in memory.

    python benchmarks/merge_memory.py --models 4 --hidden 512 --layers 8 --method ties

Builds N+1 Llama-shaped checkpoints (a base and N perturbed copies, sharded safetensors) in a temp
directory, then runs each variant in its own subprocess so peak RSS is clean: `baseline` (imports
only), `stream` (`run_merge`, tensor by tensor) and `in_memory` (every model loaded, the same
per-tensor merge, one save). Prints peak RSS above the import baseline, seconds, the ratios between
the two variants, and checks both outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process image (ru_maxrss survives exec on Linux,
    so a child would inherit the parent's peak)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(root: Path, n: int, hidden: int, layers: int, vocab: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                                  intermediate_size=4 * hidden, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root / "base", max_shard_size="100MB")
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        model.save_pretrained(root / f"m{i}", max_shard_size="100MB")


def merge_config(root: Path, n: int, method: str) -> dict:
    params = {"ties": {"density": 0.5}, "dare_ties": {"density": 0.5}, "dare_linear": {"density": 0.5}}.get(method, {})
    return {"method": method, "base_model": str(root / "base"), "parameters": params,
            "models": [{"model": str(root / f"m{i}")} for i in range(n)], "max_shard_size_mb": 100, "check_base": False}


def child(variant: str, root: Path, n: int, method: str) -> dict:
    import torch  # noqa: F401 - part of the import baseline

    from mmadapt import registry
    from mmadapt.merge.lazy import load_dir
    from mmadapt.merge.merge import load_merge_config, merge_state_dicts, run_merge
    from mmadapt.merge.params import ParamResolver

    start = time.perf_counter()
    if variant == "stream":
        run_merge(load_merge_config(merge_config(root, n, method)), root / "out_stream")
    elif variant == "in_memory":
        from safetensors.torch import save_file

        config = load_merge_config(merge_config(root, n, method))
        base = load_dir(root / "base")
        models = [load_dir(root / f"m{i}") for i in range(n)]
        resolver = ParamResolver([m.parameters for m in config.models], config.parameters, base, config.seed)
        merged = merge_state_dicts(registry.resolve("merge_method", method), base, models, resolver)
        (root / "out_memory").mkdir(exist_ok=True)
        save_file(merged, str(root / "out_memory" / "model.safetensors"), metadata={"format": "pt"})
    return {"peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--method", default="ties")
    parser.add_argument("--child", choices=["baseline", "stream", "in_memory"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args.models, args.method)))
        return

    with tempfile.TemporaryDirectory(prefix="mmadapt-merge-bench-") as tmp:
        root = Path(tmp)
        build(root, args.models, args.hidden, args.layers, args.vocab)
        model_mb = sum(f.stat().st_size for f in (root / "base").glob("*.safetensors")) / 1024**2
        largest_mb = args.vocab * args.hidden * 4 / 1024**2  # the embedding / lm_head matrices
        results = {}
        for variant in ("baseline", "stream", "in_memory"):
            cmd = [sys.executable, __file__, "--child", variant, "--root", str(root), "--models", str(args.models),
                   "--method", args.method]
            output = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
        from mmadapt.merge.lazy import load_dir

        a, b = load_dir(root / "out_stream"), load_dir(root / "out_memory")
        identical = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)

    base_rss = results["baseline"]["peak_rss_mb"]
    stream = results["stream"]["peak_rss_mb"] - base_rss
    memory = results["in_memory"]["peak_rss_mb"] - base_rss
    print(f"merge of {args.models} models + base, {model_mb:.0f} MB each (float32), method {args.method}")
    print(f"{'variant':<12} {'peak RSS - imports (MB)':>24} {'seconds':>9}")
    for name, extra in (("stream", stream), ("in_memory", memory)):
        print(f"{name:<12} {extra:>24.0f} {results[name]['seconds']:>9.2f}")
    print(f"import baseline RSS: {base_rss:.0f} MB; largest tensor {largest_mb:.1f} MB "
          f"(stream peak = {stream / largest_mb:.1f} largest tensors, whatever the number of layers)")
    print(f"memory ratio in_memory / stream: {memory / max(stream, 1e-9):.1f}x "
          f"(stream peak = {stream / model_mb:.2f} model sizes; in memory = {memory / model_mb:.2f})")
    print(f"time ratio stream / in_memory: {results['stream']['seconds'] / results['in_memory']['seconds']:.2f}")
    print(f"outputs identical: {identical}")


if __name__ == "__main__":
    main()
