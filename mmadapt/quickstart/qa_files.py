"""Writing a generated media QA dataset: one media file and one LLaVA-format record per sample, per split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from mmadapt.io import atomic_write_text

COUNTS = {1: "one", 2: "two", 3: "three"}  # the answers of every counting question (shapes, beeps)


def write_qa_splits(out: Path, modality: str, folder: str, suffix: str, sizes: dict[str, int],
                    make: Callable[[int, Path], tuple[str, str]]) -> None:
    """For each split and i < sizes[split]: `make(i, path)` writes the media file at `path` and returns (question,
    answer); `out/SPLIT.jsonl` then holds {"id", modality: "FOLDER/SPLIT-i.SUFFIX", "conversations"} records
    (written atomically once the split's files exist). Samples are made in order, so a seeded `make` is
    deterministic."""
    (out / folder).mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        lines = []
        for i in tqdm(range(n), desc=f"generating {split}", leave=False):
            name = f"{folder}/{split}-{i:05d}.{suffix}"
            question, answer = make(i, out / name)
            record = {"id": f"{split}-{i}", modality: name, "conversations": [
                {"from": "human", "value": f"<{modality}>\n{question}"}, {"from": "gpt", "value": answer}]}
            lines.append(json.dumps(record) + "\n")
        atomic_write_text(out / f"{split}.jsonl", "".join(lines))
