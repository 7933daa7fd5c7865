"""Collators: dynamic padding, label masking and media preprocessing for one batch."""

from __future__ import annotations

from typing import Any

import torch

from mmadapt.data.conversations import IGNORE_INDEX, Example
from mmadapt.errors import DataError


def pad(sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def collate_media(model: Any, examples: list[Example]) -> dict[str, Any]:
    """Preprocess every media item with its encoder; items stacked per modality in placeholder order.

    A modality with a feature cache (`model.feature_caches`, frozen encoders) gets its cached features instead.
    """
    from mmadapt.model import EncodedMedia

    processor = getattr(model, "processor", None)
    if processor is not None:  # an HF vision-language model: its processor makes the pixel tensors
        from mmadapt.hf.processing import media_batch

        return media_batch(processor, examples)
    caches = getattr(model, "feature_caches", {})
    media: dict[str, Any] = {}
    for modality, cache in caches.items():
        items = [item for example in examples for item in example.media.get(modality, [])]
        if items:
            media[modality] = EncodedMedia(cache.get(items))
    for example in examples:
        for modality, items in example.media.items():
            if modality in caches:
                continue
            encoder = model.encoders[modality]
            for item in items:
                try:
                    media.setdefault(modality, []).append(encoder.preprocess(item))
                except DataError as e:
                    raise DataError(f"{example.where}: {e}") from e
    return {m: v if m in caches else torch.stack(v) for m, v in media.items()}


class ConversationCollator:
    """Examples -> {input_ids, attention_mask, labels, media}; right padding (training)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.pad_id = model.tokenizer.pad_token_id

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        input_ids = pad([e.input_ids for e in examples], self.pad_id)
        attention_mask = pad([[1] * len(e.input_ids) for e in examples], 0)
        labels = pad([e.labels for e in examples], IGNORE_INDEX)
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        media = collate_media(self.model, examples)
        if media:
            batch["media"] = media
        return batch
