"""Items per second of `mmadapt eval`'s batched scoring against a one-at-a-time loop, measured in one run.

    python benchmarks/eval_speed.py [--model DIR] [--items 96] [--batch 32] [--threads 1]

Two workloads on the same model and items: option log-likelihood (a multiple-choice item = 4 scored
continuations, `mmadapt.eval.scoring.loglikelihood`) and greedy generation (8 new tokens,
`generate_chat`). Each runs batched (--batch) and one item at a time (batch size 1, the loop a user
would write); printed are items/s of both and their ratio (target >= 4x). --model: an mmadapt checkpoint
(e.g. runs/quickstart-vlm/stage2-instruct; its image items then carry a generated image); default: a tiny
random text Llama (hidden 64, 2 layers) built in-process. Each variant runs twice and its faster run is kept
(a shared machine's load drifts). Progress bars go to stderr: add `2>/dev/null` for the table alone.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch

from timing import best_of  # benchmarks/timing.py


def tiny_model(root: Path):
    from mmadapt.config import ModelConfig, from_dict
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    words = "what colour is the shape where is it how many shapes are there red green blue yellow one two three"
    train_word_tokenizer([words], root / "tok")
    config = from_dict(ModelConfig, {"llm": {"config": tiny_llm_config("llama", hidden=64, heads=4), "tokenizer": str(root / "tok")}})
    return MultimodalLM.from_config(config).eval()




def main() -> None:
    from mmadapt.eval.scoring import LLRequest, generate_chat, load_eval_model, loglikelihood

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an mmadapt checkpoint (default: a tiny random text model)")
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_eval_model(args.model) if args.model else tiny_model(Path(tmp))
        media = {}
        if "image" in getattr(model, "encoders", {}):
            from PIL import Image

            Image.new("RGB", (32, 32), (200, 30, 30)).save(Path(tmp) / "red.png")
            media = {"image": [Path(tmp) / "red.png"]}
        questions = ["what colour is the shape ?", "where is the shape ?", "how many shapes are there ?"]
        options = ["red", "green", "blue", "yellow", "one", "two", "three"]
        prompts = [([{"role": "user", "content": ("<image>\n" if media else "") + rng.choice(questions)}], media)
                   for _ in range(args.items)]
        requests = [LLRequest("", o, m, md) for m, md in prompts for o in rng.sample(options, 4)]
        rows = []
        with torch.no_grad():
            one = best_of(lambda: loglikelihood(model, requests, batch_size=1))
            many = best_of(lambda: loglikelihood(model, requests, batch_size=args.batch))
            rows.append(("log-likelihood (4 options)", args.items / one, args.items / many))
            one = best_of(lambda: [generate_chat(model, [p], 1, max_new_tokens=8) for p in prompts])
            many = best_of(lambda: generate_chat(model, prompts, args.batch, max_new_tokens=8))
            rows.append(("generation (8 tokens)", args.items / one, args.items / many))
    print(f"model: {args.model or 'tiny random llama (hidden 64, 2 layers)'}; {args.items} items, batch {args.batch}, "
          f"{args.threads} thread(s)")
    print(f"{'workload':28s} {'one-at-a-time items/s':>22s} {'batched items/s':>16s} {'speed-up':>9s}")
    for name, a, b in rows:
        print(f"{name:28s} {a:22.1f} {b:16.1f} {b / a:8.1f}x")


if __name__ == "__main__":
    main()
