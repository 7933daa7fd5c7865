"""Collators: dynamic padding, label masking and media preprocessing for one batch."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from mmadapt.data.conversations import Example
from mmadapt.data.tokenisation import IGNORE_INDEX, EncodedMedia, TokenisationSpec
from mmadapt.errors import DataError
from mmadapt.hf.processing import media_batch

FeatureCaches = Mapping[str, Any]  # modality -> FeatureCache (frozen encoders' features, read instead of encoding)


def pad(sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def collate_media(spec: TokenisationSpec, examples: list[Any], feature_caches: FeatureCaches | None = None
                  ) -> dict[str, Any]:
    """Preprocess every media item (`spec.preprocess`, or an HF processor); items stacked per modality in placeholder
    order. A modality with a feature cache gets its cached features instead."""
    if spec.processor is not None:  # an HF vision-language model: its processor makes the pixel tensors
        return media_batch(spec.processor, examples)
    caches = feature_caches or {}
    media: dict[str, Any] = {}
    for modality, cache in caches.items():
        items = [item for example in examples for item in example.media.get(modality, [])]
        if items:
            media[modality] = EncodedMedia(cache.get(items))
    for example in examples:
        for modality, items in example.media.items():
            if modality in caches:
                continue
            preprocess = spec.preprocess[modality]
            for item in items:
                try:
                    media.setdefault(modality, []).append(preprocess(item))
                except DataError as e:
                    raise DataError(f"{example.where}: {e}") from e
    return {m: v if m in caches else torch.stack(v) for m, v in media.items()}


class ConversationCollator:
    """Examples -> {input_ids, attention_mask, labels, media}; right padding (training)."""

    def __init__(self, spec: TokenisationSpec, feature_caches: FeatureCaches | None = None) -> None:
        self.spec = spec
        self.feature_caches = feature_caches
        self.pad_id = spec.tokenizer.pad_token_id

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        input_ids = pad([e.input_ids for e in examples], self.pad_id)
        attention_mask = pad([[1] * len(e.input_ids) for e in examples], 0)
        labels = pad([e.labels for e in examples], IGNORE_INDEX)
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        media = collate_media(self.spec, examples, self.feature_caches)
        if media:
            batch["media"] = media
        return batch
