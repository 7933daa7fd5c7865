"""The encoder base class and the options every vision tower shares (which layer, CLS token)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmadapt.errors import DataError


@dataclass
class VisionOptions:
    """Options common to the vision backends (each backend's config subclasses this)."""

    layer: int = -1  # hidden layer whose tokens are taken (-1: last; LLaVA uses -2)
    drop_cls: bool = True  # drop prefix tokens (CLS / register tokens) and keep the patch tokens


class BaseEncoder(nn.Module, abc.ABC):
    """An encoder: `preprocess(one raw item) -> Tensor`, `forward(batch) -> [B, num_features, hidden_size]`.

    Subclasses set `modality`, `config_class`, `hidden_size` and `num_features` in `__init__`.
    """

    modality: str = "image"
    config_class: type = VisionOptions
    hidden_size: int
    num_features: int

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        self.config = config  # the backend's config dataclass (an instance of `config_class`)

    @abc.abstractmethod
    def preprocess(self, raw: Any) -> torch.Tensor:
        """Decode and transform one raw item (a path, bytes, an array) into the encoder's input tensor."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check(self, path: Path) -> None:
        """Cheap validity check of one media file before training (header only); raises DataError.

        Images are verified here; other modalities override it (their decoders know their formats)."""
        if self.modality == "image":
            from PIL import Image

            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as e:  # PIL raises many types for corrupt files
                raise DataError(f"corrupt or unreadable image {path}: {e}") from e

    def reload_spec(self, spec: dict[str, Any], checkpoint_dir: Path, modality: str) -> dict[str, Any]:
        """The spec that rebuilds this encoder inside a saved checkpoint, whose multimodal.safetensors
        holds the weights: no hub download, no original weight file. Backends that need files (an HF
        config, an image processor) write them under `checkpoint_dir` and point to them with
        "@checkpoint/<relative path>"."""
        if "pretrained" in spec:
            spec["pretrained"] = False if isinstance(spec["pretrained"], bool) else None
        if "checkpoint_path" in spec:
            spec["checkpoint_path"] = None
        return spec


def load_image(raw: Any):
    """A PIL RGB image from a path, bytes, a PIL image or an HxWxC uint8 array; errors name the file."""
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if isinstance(raw, Image.Image):
        return raw.convert("RGB")
    if isinstance(raw, np.ndarray):
        return Image.fromarray(raw).convert("RGB")
    try:
        if isinstance(raw, (bytes, bytearray)):
            image = Image.open(io.BytesIO(raw))
        else:
            path = Path(raw)
            if not path.is_file():
                raise DataError(f"image file not found: {path}")
            image = Image.open(path)
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot decode image {raw if not isinstance(raw, (bytes, bytearray)) else '<bytes>'}: {e}") from e


def select_tokens(hidden: torch.Tensor, num_prefix_tokens: int, drop_cls: bool) -> torch.Tensor:
    """[B, prefix + N, D] -> [B, N, D] when dropping prefix (CLS/register) tokens."""
    return hidden[:, num_prefix_tokens:] if drop_cls and num_prefix_tokens else hidden
