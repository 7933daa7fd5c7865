"""Sequence packing vs padding for SFT on variable-length samples: tokens/s of real (non-pad) tokens, in one run.

A tiny Llama trains forward + backward on batches of samples whose lengths are spread evenly between 16 and
`--max-length`; the padded side pads each batch to its longest sample, the packed side packs the same batch
into rows of at most max_length (mmadapt.data.packing). The sides alternate round by round (a busy machine
slows both alike) and the median per-round ratio is printed last. Target: ratio >= 1.5.

    python benchmarks/packing.py [--rounds 5] [--batch-size 16] [--max-length 512]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per side per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from transformers import AutoConfig, AutoModelForCausalLM

    from mmadapt.data.collator import pad
    from mmadapt.data.conversations import IGNORE_INDEX, Example
    from mmadapt.data.packing import PackedCollator

    vocab = 1000
    config = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                  max_position_embeddings=args.max_length, attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = random.Random(0)

    class Tok:  # the collator reads only the pad id
        pad_token_id = 0

    class Holder:
        tokenizer = Tok()

    packer = PackedCollator(Holder(), args.max_length)

    def batch() -> list[Example]:
        out = []
        for i in range(args.batch_size):
            n = rng.randint(16, args.max_length)
            ids = [rng.randrange(1, vocab) for _ in range(n)]
            out.append(Example(f"s{i}", ids, list(ids)))
        return out

    def step(inputs: dict) -> None:
        loss = model(**inputs).logits.float().log_softmax(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def padded(examples: list[Example]) -> dict:
        return {"input_ids": pad([e.input_ids for e in examples], 0),
                "attention_mask": pad([[1] * len(e.input_ids) for e in examples], 0),
                "labels": pad([e.labels for e in examples], IGNORE_INDEX)}

    def packed(examples: list[Example]) -> dict:
        b = packer(examples)
        return {"input_ids": b["input_ids"], "position_ids": b["position_ids"], "use_cache": False}

    ratios, rates = [], {"padded": [], "packed": []}
    for round_ in range(args.rounds):
        batches = [batch() for _ in range(args.steps)]
        tokens = sum(len(e.input_ids) for b in batches for e in b)
        for name, make in (("padded", padded), ("packed", packed)):
            start = time.perf_counter()
            for b in batches:
                step(make(b))
            rates[name].append(tokens / (time.perf_counter() - start))
        ratios.append(rates["packed"][-1] / rates["padded"][-1])
        print(f"round {round_}: padded {rates['padded'][-1]:.0f} tok/s, packed {rates['packed'][-1]:.0f} tok/s, "
              f"ratio {ratios[-1]:.2f}")
    print(f"padded_tokens_per_s={statistics.median(rates['padded']):.0f} "
          f"packed_tokens_per_s={statistics.median(rates['packed']):.0f}")
    print(f"ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
