"""`mmadapt quickstart dpo`: DPO with LoRA on the vlm quickstart's SFT model, on generated preference pairs.

Pairs come from the shapes data: the question about an image, the correct answer chosen and a
plausible wrong one (another colour, shape, corner or count) rejected. Training pairs use the
training images (each against every wrong answer of its kind); held-out pairs use the eval images
(one wrong answer drawn at random), which also give the exact-match accuracy.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any


from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)

SFT_STAGE = "stage2-instruct"


def answer_kinds() -> list[tuple[str, ...]]:
    """The answer vocabularies of the shapes task; a wrong answer is drawn from the right one's kind."""
    from mmadapt.quickstart.shapes import CELLS, COLOURS, COUNTS, SHAPES

    return [tuple(COLOURS), tuple(SHAPES), tuple(CELLS), tuple(COUNTS.values())]


def preference_pairs(
    records: list[tuple[str, dict[str, Any]]], every_wrong: bool, seed: int = 0
) -> list[dict[str, Any]]:
    """{id, image, prompt, chosen, rejected} pairs: the answer against every wrong answer of its kind (or one, at
    random)."""
    rng = random.Random(seed)
    kinds = answer_kinds()
    pairs = []
    for where, record in records:
        question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        kind = next((k for k in kinds if answer in k), None)
        if kind is None:
            raise ConfigError(f"{where}: answer {answer!r} is not a shapes answer; regenerate the vlm quickstart data")
        wrong = [a for a in kind if a != answer]
        for rejected in wrong if every_wrong else [rng.choice(wrong)]:
            pairs.append({"id": record.get("id", where), "image": record["image"], "prompt": question,
                          "chosen": answer, "rejected": rejected})
    return pairs


def write_pairs(data_dir: Path, out: Path, seed: int) -> None:
    """out/train.jsonl (every wrong answer per training image) and out/eval.jsonl (one random wrong answer per
    held-out image); image paths stay relative to the vlm data folder. Written once."""
    from mmadapt.data.records import read_records
    from mmadapt.io import atomic_directory

    if (out / "eval.jsonl").is_file():
        return
    with atomic_directory(out) as tmp:
        for split in ("train", "eval"):
            pairs = preference_pairs(read_records(data_dir / f"{split}.jsonl"), every_wrong=split == "train", seed=seed)
            (tmp / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def generate_pairs(out_dir: str | Path, data: str | Path, seed: int = 0) -> None:
    """The `shapes_pairs` dataset generator: preference pairs from a shapes dataset (`data`: its folder) into
    `out_dir`/train.jsonl and eval.jsonl, image paths pointing into `data`."""
    from mmadapt.data.records import read_records

    data = Path(data).resolve()
    if not (data / "train.jsonl").is_file():
        raise ConfigError(f"data.generate.data: {data} holds no shapes dataset (train.jsonl); generate it first "
                          "(data.generate: {name: shapes, out: ...})")
    for split in ("train", "eval"):
        pairs = preference_pairs(read_records(data / f"{split}.jsonl"), every_wrong=split == "train", seed=seed)
        for pair in pairs:
            pair["image"] = str(data / pair["image"])
        (Path(out_dir) / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def run(out: Path, connector: str | None = None) -> dict[str, float]:
    import torch

    from mmadapt.run_config import load_run
    from mmadapt.data.records import read_records
    from mmadapt.generate import exact_match
    from mmadapt.io import atomic_write_json
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart import vlm
    from mmadapt.quickstart.media_qa import packaged_config
    from mmadapt.cli.train import print_table
    from mmadapt.train.run import train

    if connector is not None:
        raise ConfigError("--connector: the dpo quickstart reuses the vlm quickstart's model; run `mmadapt quickstart "
                          "vlm --connector ...` first")
    start = time.perf_counter()
    out = Path(out)
    vlm_dir = out.parent / "quickstart-vlm"
    sft = vlm_dir / SFT_STAGE
    if not (sft / "manifest.json").is_file():
        logger.info("no SFT model in %s: running the vlm quickstart first", sft)
        vlm.run(vlm_dir)
    data_dir = vlm_dir / "data"
    raw = packaged_config("dpo")
    write_pairs(data_dir, out / "pairs", seed=raw.get("seed", 0))
    raw["model"] = {"init_from": str(sft)}  # the SFT run as it was saved (and its lineage, embedded)
    raw["data"].update(train=str(out / "pairs" / "train.jsonl"), eval=str(out / "pairs" / "eval.jsonl"),
                       media_root=str(data_dir))
    config = load_run(raw, [f"output_dir={out}"])

    eval_records = read_records(data_dir / "eval.jsonl")
    torch.manual_seed(config.seed)
    before, _ = exact_match(MultimodalLM.from_pretrained(sft), eval_records, data_dir, desc="SFT model accuracy")
    summary = train(config, overwrite=True)  # a re-run replaces its own earlier outputs
    after, answers = exact_match(MultimodalLM.from_pretrained(out), eval_records, data_dir, desc="DPO model accuracy")
    metrics = {
        "preference_accuracy": summary["eval_preference_accuracy"],
        "eval_accuracy": after,
        "eval_accuracy_sft": before,
        "eval_rewards_margin": summary["eval_rewards_margin"],
        "eval_rewards_chosen": summary["eval_rewards_chosen"],
        "eval_rewards_rejected": summary["eval_rewards_rejected"],
        "train_preference_accuracy": summary.get("train_preference_accuracy", float("nan")),
        "train_loss": summary["train_loss"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": time.perf_counter() - start,
        "eval_pairs": summary.get("data_eval_examples", 0.0),
    }
    atomic_write_json(out / "metrics.json", {**{k: v for k, v in summary.items() if isinstance(v, float)}, **metrics})
    print_table(metrics, title=f"quickstart dpo (LoRA DPO on {sft})  model: {out}")
    for prediction, reference in answers[:5]:
        logger.info("sample answer: %r (reference %r)", prediction, reference)
    return metrics
