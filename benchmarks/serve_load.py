"""Load test of `mmadapt serve`: p50/p99 latency, generated tokens/s and errors at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_load.py [--clients 1,4,16] [--requests-per-client 4] [--max-tokens 32]
                                    [--hidden 64] [--layers 2] [--rounds 2] [--threads 1]

Builds a tiny llama MultimodalLM (word tokenizer, random weights; EOS suppressed, so every answer is exactly
--max-tokens tokens and levels compare like with like), starts the real server (`mmadapt serve` in a
subprocess: uvicorn on 127.0.0.1, default batching) and drives it from N concurrent clients (asyncio tasks
with httpx, a light load generator as vLLM's benchmark_serving uses, so the figures are the server's), each sending --requests-per-client requests back to back (closed loop, sampled with its own seed), the levels
run --rounds times in alternating order (1,4,16,16,4,1) and pooled. Latency:
request sent -> whole answer back. Tokens/s: completion tokens of all requests / wall time of the level.
Mean batch: requests per decoded batch, from the server's /health counters.
The issue's target: tokens/s at 16 clients >= 4x tokens/s at 1 client, 0 errors. The ratio is measured in
one run, on one server, so machine load shifts both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = ["the quick brown fox jumps over the lazy dog . hello world , which planet is the biggest ?",
         "red green blue yellow circle square triangle one two three top bottom left right what colour is it"]


def build_model(directory: Path, hidden: int, layers: int) -> Path:
    import torch

    from mmadapt.config import ModelConfig, from_dict
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    train_word_tokenizer(WORDS, directory / "tokenizer")
    spec = {"llm": {"config": tiny_llm_config("llama", hidden=hidden, layers=layers, heads=2, max_positions=512),
                    "tokenizer": str(directory / "tokenizer")}}
    torch.manual_seed(0)
    model = MultimodalLM.from_config(from_dict(ModelConfig, spec))
    model.llm.generation_config.suppress_tokens = [model.tokenizer.eos_token_id]
    return model.save_pretrained(directory / "tiny-chat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "mmadapt.cli", "serve", str(model), "--port", str(port)], env=env)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not answer /health within 120 s")


def run_level(base_url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    """N concurrent clients (asyncio tasks over one httpx connection pool), each sending its requests back to back."""
    return asyncio.run(_level(base_url, model, clients, per_client, max_tokens))


async def _level(base_url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    tokens, errors = [0], [0]
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=httpx.Limits(max_connections=64)) as http:
        async def client_loop(c: int) -> None:
            for r in range(per_client):
                body = {"model": model, "messages": [{"role": "user", "content": f"which planet is the biggest ? {c} {r}"}],
                        "max_tokens": max_tokens, "temperature": 1.0, "seed": 1000 * c + r}
                start = time.perf_counter()
                try:
                    reply = await http.post("/chat/completions", json=body)
                    reply.raise_for_status()
                    tokens[0] += reply.json()["usage"]["completion_tokens"]
                    latencies.append(time.perf_counter() - start)
                except httpx.HTTPError:  # counted, not raised: the figure is the error count
                    errors[0] += 1

        health = base_url.removesuffix("/v1") + "/health"
        before = (await http.get(health)).json()
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in range(clients)))
        wall = time.perf_counter() - start
        after = (await http.get(health)).json()
    return {"clients": clients, "requests": clients * per_client, "latencies": latencies, "tokens": tokens[0],
            "errors": errors[0], "wall_s": wall,
            "batched": after["requests"] - before["requests"], "batches": after["batches"] - before["batches"]}


def pool(runs: list[dict]) -> dict:
    """One level's rounds together: latencies pooled, tokens/s = all tokens / all wall time."""
    latencies = sorted(x for r in runs for x in r["latencies"]) or [float("nan")]
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    return {"clients": runs[0]["clients"], "requests": sum(r["requests"] for r in runs),
            "p50_s": statistics.median(latencies), "p99_s": percentile(latencies, 0.99),
            "tokens_per_s": tokens / wall, "errors": sum(r["errors"] for r in runs),
            "mean_batch": sum(r["batched"] for r in runs) / max(1, sum(r["batches"] for r in runs))}


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the levels (alternating order), pooled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp), args.hidden, args.layers)
        port = free_port()
        server = start_server(model, port, args.threads)
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            # warm-up: first-call costs and first batch shapes out of the figures
            for n in (1, max(levels)):
                run_level(base_url, model.name, n, 4, args.max_tokens)
            # levels in order, then in reverse: a machine getting busier or quieter over the run shifts all alike
            order = [n for _ in range(args.rounds) for n in levels] if args.rounds == 1 else \
                [n for r in range(args.rounds) for n in (levels if r % 2 == 0 else levels[::-1])]
            runs = [run_level(base_url, model.name, n, args.requests_per_client, args.max_tokens) for n in order]
            rows = [pool([r for r in runs if r["clients"] == n]) for n in levels]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"tiny llama: hidden {args.hidden}, {args.layers} layers; {args.max_tokens} tokens per answer; "
          f"{args.requests_per_client} requests per client x {args.rounds} rounds; server torch threads {args.threads}")
    print(f"{'clients':>7} {'requests':>8} {'p50 s':>8} {'p99 s':>8} {'tokens/s':>9} {'errors':>6} {'vs 1':>6} "
          f"{'mean batch':>10}")
    base = rows[0]["tokens_per_s"]
    for row in rows:
        print(f"{row['clients']:>7} {row['requests']:>8} {row['p50_s']:>8.3f} {row['p99_s']:>8.3f} "
              f"{row['tokens_per_s']:>9.1f} {row['errors']:>6} {row['tokens_per_s'] / base:>5.1f}x {row['mean_batch']:>10.1f}")
    top = rows[-1]
    ok = top["tokens_per_s"] >= 4 * base and all(r["errors"] == 0 for r in rows)
    print(f"target (tokens/s at {top['clients']} clients >= 4x at {rows[0]['clients']}, 0 errors): "
          f"{'met' if ok else 'NOT met'} ({top['tokens_per_s'] / base:.1f}x)")


if __name__ == "__main__":
    main()
