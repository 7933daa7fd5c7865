"""open_clip vision towers: any open_clip model name, a pretrained tag (online) or local checkpoint, or random weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from mmadapt.encoders.base import BaseEncoder, VisionOptions, load_image
from mmadapt.errors import ConfigError


@dataclass
class OpenClipConfig(VisionOptions):
    model_name: str = "ViT-B-16"  # an open_clip name, or "hf-hub:org/repo" / "local-dir:/path" (weights included)
    pretrained: str | None = None  # a tag such as "openai" (online) or a full-model checkpoint file; None: random weights
    model_overrides: dict[str, Any] = field(default_factory=dict)  # deep-merged into the model config, e.g. {vision_cfg: {layers: 2}}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class OpenClipEncoder(BaseEncoder):
    """Patch tokens of an open_clip image tower (ViT, timm trunk or ResNet) at hidden layer `layer`."""

    modality = "image"
    config_class = OpenClipConfig

    def __init__(self, config: OpenClipConfig) -> None:
        super().__init__()
        import open_clip

        self.config = config
        overrides: dict[str, Any] = {}
        if config.model_overrides:
            # open_clip replaces top-level keys wholesale; merge so {vision_cfg: {layers: 2}} keeps the rest.
            base = open_clip.get_model_config(config.model_name.replace("/", "-"))
            if base is None:
                raise ConfigError(f"encoder model_overrides need a built-in open_clip model_name, got {config.model_name!r}")
            overrides = {k: _deep_merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in config.model_overrides.items()}
        try:
            model, _, self.transform = open_clip.create_model_and_transforms(
                config.model_name,
                pretrained=config.pretrained,
                pretrained_text=False,  # the text tower is discarded: never download its base weights
                force_patch_dropout=0.0,  # patch dropout would make the token count vary in training mode
                **overrides,
            )
        except RuntimeError as e:
            raise ConfigError(f"encoder openclip model_name={config.model_name!r} pretrained={config.pretrained!r}: {e}") from e
        self.visual = model.visual  # the text tower and logit scale are not needed
        with torch.no_grad():
            probe = self.preprocess(Image.new("RGB", (8, 8)))[None]
            try:
                features = self.forward(probe)
            except AssertionError as e:  # open_clip checks the layer index with an assert
                raise ConfigError(f"encoder openclip layer={config.layer}: {e}") from e
        self.num_features, self.hidden_size = int(features.shape[1]), int(features.shape[2])

    def preprocess(self, raw: Any) -> torch.Tensor:
        return self.transform(load_image(raw))  # the model's own resize / crop / normalise -> [3, H, W]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            batch, indices=[self.config.layer], stop_early=True, intermediates_only=True,
            output_fmt="NCHW", output_extra_tokens=not self.config.drop_cls,
        )
        patches = out["image_intermediates"][0].flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]
        prefix = out.get("image_intermediates_prefix")  # ViTs: [B, 1, C] class token; ResNets have none
        return patches if prefix is None else torch.cat([prefix[0], patches], dim=1)
