"""Sequence packing for SFT: a batch's samples back to back in rows of at most `max_length`, no padding between.

Position ids restart at 0 for every sample, and with no 2D attention mask transformers builds a
block-diagonal causal mask from them (SDPA and eager on CPU; flash-attention's varlen kernels on GPU),
so each sample attends only to itself. The first label of each sample is masked: the token before it
belongs to another sample. Per-sample losses therefore equal the unpacked ones; what changes is that
the rows carry no padding, so a step spends its compute on real tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from mmadapt.data.collator import FeatureCaches, collate_media
from mmadapt.data.conversations import Example
from mmadapt.data.tokenisation import IGNORE_INDEX, TokenisationSpec


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices grouped into rows of total length <= capacity (first fit, longest first); order kept in rows."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return [sorted(row) for row in rows]


class PackedCollator:
    """Examples -> {input_ids, labels, position_ids: [R, L] (R packed rows), media}; no attention_mask."""

    def __init__(self, spec: TokenisationSpec, max_length: int, feature_caches: FeatureCaches | None = None) -> None:
        self.spec = spec
        self.max_length = max_length
        self.feature_caches = feature_caches
        self.pad_id = spec.tokenizer.pad_token_id

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        rows = first_fit([len(e.input_ids) for e in examples], self.max_length)
        width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
        ids, labels, positions = [], [], []
        for row in rows:
            row_ids, row_labels, row_positions = [], [], []
            for i in row:
                example = examples[i]
                row_ids += example.input_ids
                row_labels += [IGNORE_INDEX] + example.labels[1:]
                row_positions += range(len(example.input_ids))
            pad = width - len(row_ids)  # the tail is one more "sample" of padding, never a target
            ids.append(row_ids + [self.pad_id] * pad)
            labels.append(row_labels + [IGNORE_INDEX] * pad)
            positions.append(row_positions + list(range(pad)))
        batch: dict[str, Any] = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                                 "position_ids": torch.tensor(positions)}
        # media in placeholder order: the order of the samples within the packed rows
        media = collate_media(self.spec, [examples[i] for row in rows for i in row], self.feature_caches)
        if media:
            batch["media"] = media
        return batch
