"""A measured cost model: training memory and step time at three model sizes, RAG build/query time at 10k-1M passages.

Run: `python benchmarks/cost_model.py [--threads 1] [--sizes 10m,60m,250m] [--passages 10000,100000,1000000]`.
Training: random-init Qwen2-style decoders built from config (speed and memory do not depend on the weights),
CPU fp32, AdamW, batch 2 x 128 tokens; each size runs in its own process so its peak RSS is its own. Memory is
split into weights, gradients and Adam states (exact tensor bytes), activations (bytes of the tensors autograd
saves in the forward, counted by `saved_tensors_hooks`) and the rest of the peak RSS (allocator, temporaries).
RAG: mmadapt's own faiss indices (rag/index.py) on generated 384-d vectors (a mixture of Gaussians,
normalised); embedding speed is timed on a random-init MiniLM-L6 (the all-MiniLM-L6-v2 shape) over a
sample and the 1M-passage embedding time extrapolated from it. Then the arithmetic for 7B / 70B models
and 10M+ passages, from these figures. On a shared machine every time is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SIZES = {  # name: (hidden, layers, intermediate, heads, kv_heads, vocab); Qwen2 layout, tied embeddings
    "10m": (256, 6, 768, 4, 2, 16000),
    "60m": (512, 12, 1536, 8, 2, 32000),
    "250m": (1024, 16, 3072, 16, 4, 32000),
}
TARGETS = {  # published configs (hidden, layers, intermediate, heads, kv_heads, vocab, tied)
    "Qwen2.5-7B": (3584, 28, 18944, 28, 4, 152064, False),
    "Llama-3-70B": (8192, 80, 28672, 64, 8, 128256, False),
}
GiB = 2**30


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def train_child(name: str, batch: int, seq: int, steps: int) -> dict:
    """One size in this process: exact byte counts, activation bytes, peak RSS, step seconds."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hidden, layers, inter, heads, kv, vocab = SIZES[name]
    base = rss_bytes()
    config = AutoConfig.for_model("qwen2", hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                                  num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                  tie_word_embeddings=True, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq))
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()  # counts parameters autograd keeps too: subtracted below
        return t

    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        saved[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the steady state of a training loop
        if step:  # the first step allocates the Adam states
            times.append(time.perf_counter() - start)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # parameters saved for backward are views of the weights, not new memory
    activations = max(0, saved[0] - weight_bytes)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"name": name, "params": params, "layers": layers, "hidden": hidden, "tokens": batch * seq,
            "weights": weight_bytes, "grads": weight_bytes, "adam": state_bytes, "activations": activations,
            "peak_rss": peak, "step_s": statistics.median(times), "threads": torch.get_num_threads()}


def train_table(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.sizes.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\n## Training, CPU fp32, AdamW, batch 2 x 128 tokens, {rows[0]['threads']} thread(s) (median of {args.steps} steps)")
    print(f"{'model':<6}{'params':>12}{'weights':>9}{'grads':>9}{'adam':>9}{'activ.':>9}{'peak RSS':>10}"
          f"{'B/param':>9}{'step s':>8}{'GFLOP/s':>9}")
    for r in rows:
        flops = 6 * r["params"] * r["tokens"]  # forward + backward, dense layers (attention at 128 tokens is small)
        print(f"{r['name']:<6}{r['params']:>12,}{r['weights'] / GiB:>8.2f}G{r['grads'] / GiB:>8.2f}G{r['adam'] / GiB:>8.2f}G"
              f"{r['activations'] / GiB:>8.2f}G{r['peak_rss'] / GiB:>9.2f}G{r['peak_rss'] / r['params']:>9.1f}"
              f"{r['step_s']:>8.2f}{flops / r['step_s'] / 1e9:>9.1f}")
    for r in rows:  # activation bytes per token per layer per hidden unit: the coefficient that scales up
        r["act_coef"] = r["activations"] / (r["tokens"] * r["layers"] * r["hidden"])
    print("activation bytes per (token x layer x hidden unit), fp32: "
          + ", ".join(f"{r['name']} {r['act_coef']:.1f}" for r in rows))
    return rows


def param_count(hidden: int, layers: int, inter: int, heads: int, kv: int, vocab: int, tied: bool) -> tuple[int, int]:
    """(total parameters, LoRA r=16 parameters on q,k,v,o,gate,up,down) of a Qwen2/Llama-layout decoder."""
    head = hidden // heads
    kv_dim = kv * head
    attn = hidden * hidden * 2 + hidden * kv_dim * 2
    mlp = 3 * hidden * inter
    total = layers * (attn + mlp + 2 * hidden) + vocab * hidden * (1 if tied else 2) + hidden
    r = 16
    lora = layers * r * ((hidden + hidden) * 2 + (hidden + kv_dim) * 2 + (hidden + inter) * 3)
    return total, lora


def scale_up(rows: list[dict]) -> None:
    coef = max(r["act_coef"] for r in rows) / 2  # bf16 activations: half the fp32 bytes
    print("\n## 7B / 70B, from these figures (bytes per parameter: bf16 weights 2, bf16 grads 2, fp32 master 4, "
          "Adam m+v 8 = 16 full; LoRA: frozen bf16 weights 2 + 16 per LoRA parameter; QLoRA: NF4 0.5 + ~0.03 quantisation "
          "constants (double quant) + 16 per LoRA parameter)")
    print(f"activations (bf16, no checkpointing) ~ {coef:.1f} B x tokens x layers x hidden; with checkpointing only the "
          "layer inputs stay (2 B x tokens x layers x hidden) plus one layer's worth")
    for name, spec in TARGETS.items():
        hidden, layers, *_ = spec
        total, lora = param_count(*spec)
        act = coef * 4096 * layers * hidden
        act_ckpt = 2 * 4096 * layers * hidden + coef * 4096 * hidden
        full = 16 * total
        print(f"{name}: {total / 1e9:.2f}B parameters; LoRA r=16 all linear: {lora / 1e6:.1f}M ({100 * lora / total:.2f}%)")
        print(f"  full fine-tune: 16 x {total / 1e9:.2f}B = {full / GiB:.0f} GiB states; ZeRO-3 / FSDP full shard over 8 GPUs: "
              f"{full / 8 / GiB:.0f} GiB per GPU + activations (4096 tokens/GPU: {act / GiB:.1f} GiB, {act_ckpt / GiB:.1f} "
              "GiB checkpointed)")
        lora_b = 2 * total + 16 * lora
        qlora_b = 0.53 * total + 16 * lora
        print(f"  LoRA: 2 x {total / 1e9:.2f}B + 16 x {lora / 1e6:.1f}M = {lora_b / GiB:.1f} GiB (+ activations); "
              f"sharded over 8: {lora_b / 8 / GiB:.1f} GiB per GPU")
        print(f"  QLoRA 4-bit: 0.53 x {total / 1e9:.2f}B + 16 x {lora / 1e6:.1f}M = {qlora_b / GiB:.1f} GiB (+ activations, "
              f"{act_ckpt / GiB:.1f} GiB checkpointed at 4096 tokens)")
        seconds = 6 * total * 1e6 / (0.4 * 989e12)  # H100 / H200 SXM: 989 TFLOP/s dense bf16
        print(f"  time per 1M tokens on one H100/H200 at 40% MFU: full 6 x {total / 1e9:.2f}B x 1M / (0.4 x 989T) = "
              f"{seconds:.0f} s; LoRA / QLoRA (~4 x: no weight gradients for the frozen base) {seconds * 2 / 3:.0f} s; "
              f"divide by the number of GPUs (data parallel / sharded)")

def rag_table(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    from mmadapt.rag.index import IndexConfig, add, new_index, resolve_kind, search

    dim, n_queries, k = 384, 200, 10
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                        vocab_size=30522)
    encoder = BertModel(config).eval()
    sample = torch.randint(1000, 30000, (256, 128))
    with torch.no_grad():
        encoder(input_ids=sample[:32])  # warm-up
        start = time.perf_counter()
        for chunk in sample.split(64):
            encoder(input_ids=chunk).last_hidden_state.mean(1)
        per_s = len(sample) / (time.perf_counter() - start)
    print(f"\n## RAG: embedding (MiniLM-L6 shape, 128-token passages, CPU fp32, {torch.get_num_threads()} thread(s)): "
          f"{per_s:.0f} passages/s -> 1M passages {1e6 / per_s / 3600:.1f} h, 10M {1e7 / per_s / 3600:.0f} h on this CPU")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    sizes = [int(s) for s in args.passages.split(",")]
    vectors = centres[rng.integers(0, 1000, max(sizes))] + 0.6 * rng.standard_normal((max(sizes), dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, max(sizes), n_queries)] + 0.05 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"{'passages':>10}{'kind':>7}{'build s':>9}{'vectors/s':>11}{'query ms':>10}{'recall@10':>11}{'index MiB':>11}")
    hnsw_rate = None
    for n in sizes:
        data, ids = vectors[:n], np.arange(n, dtype=np.int64)
        exact = new_index("flat", dim, IndexConfig())
        add(exact, data, ids)
        truth = search(exact, queries, k, IndexConfig())[1]
        kinds = ["flat", "hnsw"] if n <= 10_000 else ["hnsw", "ivfpq"] if n <= 100_000 else ["ivfpq"]
        for kind in kinds:
            config = IndexConfig(kind=kind)
            start = time.perf_counter()
            index = new_index(kind, dim, config, train=data[rng.integers(0, n, min(n, 100_000))] if kind == "ivfpq" else None)
            add(index, data, ids)
            build = time.perf_counter() - start
            start = time.perf_counter()
            found = search(index, queries, k, config)[1]
            query_ms = 1000 * (time.perf_counter() - start) / n_queries
            recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
            size = _index_bytes(index) / 2**20
            auto = " (auto)" if resolve_kind(IndexConfig(), n) == kind else ""
            print(f"{n:>10,}{kind:>7}{build:>9.1f}{n / build:>11,.0f}{query_ms:>10.2f}{recall:>11.3f}{size:>11.0f}{auto}")
            if kind == "hnsw":
                hnsw_rate = (n, build)
        del exact
    if hnsw_rate and max(sizes) > hnsw_rate[0]:
        n0, t0 = hnsw_rate
        n1 = max(sizes)
        print(f"HNSW at {n1:,} (auto's choice up to 2M), extrapolated from {n0:,} (insert cost ~ log n): "
              f"{t0 * (n1 / n0) * np.log(n1) / np.log(n0):.0f} s build, {n1 * (dim * 4 + 32 * 2 * 4) / 2**20:.0f} MiB")


def _index_bytes(index) -> int:
    import faiss

    return len(faiss.serialize_index(index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="10m,60m,250m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--passages", default="10000,100000,1000000")
    parser.add_argument("--skip", choices=["train", "rag"], help="leave one part out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(train_child(args.child, batch=2, seq=128, steps=args.steps)))
        return
    print(f"cost model on {_cpu()} ({args.threads} thread(s)); a shared machine: times are upper bounds")
    if args.skip != "train":
        scale_up(train_table(args))
    if args.skip != "rag":
        rag_table(args)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "an unknown CPU"


if __name__ == "__main__":
    main()
