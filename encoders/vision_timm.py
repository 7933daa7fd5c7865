"""timm vision towers: any timm model name, random init or a local weights file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mmadapt.encoders.base import BaseEncoder, VisionOptions, load_image, select_tokens
from mmadapt.errors import ConfigError


@dataclass
class TimmConfig(VisionOptions):
    model_name: str = "vit_base_patch16_224"
    pretrained: bool = False  # True: timm's hub weights (online)
    checkpoint_path: str | None = None  # a local weights file (safetensors or state-dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. img_size, patch_size, embed_dim, depth


class TimmEncoder(BaseEncoder):
    config_class = TimmConfig

    def __init__(self, config: TimmConfig) -> None:
        super().__init__(config)
        import timm

        try:
            self.model = timm.create_model(
                config.model_name,
                pretrained=config.pretrained,
                checkpoint_path=config.checkpoint_path or "",
                num_classes=0,
                **config.model_kwargs,
            )
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(f"encoder model_name {config.model_name!r}: {e}") from e
            raise
        data_config = timm.data.resolve_data_config({}, model=self.model)
        # A ViT built with another img_size keeps its pretrained_cfg's 224: trust the patch embedding.
        img_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if img_size is not None and tuple(img_size) != tuple(data_config["input_size"][1:]):
            data_config.update(input_size=(3, *img_size), crop_pct=1.0)
        self.transform = timm.data.create_transform(**data_config, is_training=False)
        self.hidden_size = int(self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        with torch.no_grad():
            probe = torch.zeros(1, *data_config["input_size"])
            self.num_features = int(self.forward(probe).shape[1])

    def preprocess(self, raw: Any) -> torch.Tensor:
        return self.transform(load_image(raw))  # [3, H, W]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "forward_intermediates") and self.config.layer != -1:
            _, intermediates = self.model.forward_intermediates(
                batch, indices=[self.config.layer], output_fmt="NLC", return_prefix_tokens=True, norm=False
            )
            patches, prefix = intermediates[0]
            return patches if self.config.drop_cls else torch.cat([prefix, patches], dim=1)
        features = self.model.forward_features(batch)
        if features.ndim == 4:  # CNN: [B, C, H, W] -> [B, H*W, C]
            return features.flatten(2).transpose(1, 2)
        return select_tokens(features, self.num_prefix_tokens, self.config.drop_cls)
