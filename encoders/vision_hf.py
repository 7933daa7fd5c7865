"""Hugging Face vision towers (CLIPVisionModel, SiglipVisionModel, ...) by hub id or local directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmadapt.encoders.base import BaseEncoder, VisionOptions, load_image, select_tokens
from mmadapt.errors import ConfigError


@dataclass
class HFVisionConfig(VisionOptions):
    # A vision-tower checkpoint, or a full CLIP / SigLIP one (its vision tower is loaded); needs a saved image processor.
    name_or_path: str = "openai/clip-vit-large-patch14"
    pretrained: bool = True  # False: random weights from the checkpoint's config (a saved mmadapt model loads its own)


class HFVisionEncoder(BaseEncoder):
    """Tokens of layer `layer` (block index; -1: the last block, before the post-layernorm) of an HF vision model."""

    config_class = HFVisionConfig

    def __init__(self, config: HFVisionConfig) -> None:
        super().__init__(config)
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        where = f"encoder hf_vision name_or_path={config.name_or_path!r}"
        try:
            hf_config = AutoConfig.from_pretrained(config.name_or_path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{where}: cannot load its config: {e}") from e
        # A dual-encoder checkpoint (model_type clip / siglip) nests the tower's config; AutoModel maps that
        # config class to the vision-only model, which loads the vision weights and ignores the text ones.
        vision_config = getattr(hf_config, "vision_config", None) or hf_config
        layers = int(vision_config.num_hidden_layers)
        if not -layers <= config.layer < layers:
            raise ConfigError(f"{where}: layer={config.layer} is out of range; valid: {-layers} to {layers - 1}")
        try:
            self.processor = AutoImageProcessor.from_pretrained(config.name_or_path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{where}: no image processor found (preprocessor_config.json); save the one the tower was trained "
                f"with next to it, e.g. CLIPImageProcessor(...).save_pretrained(dir): {e}"
            ) from e
        if config.pretrained:
            self.model, info = AutoModel.from_pretrained(config.name_or_path, config=vision_config, output_loading_info=True)
            if info["missing_keys"]:  # a tower left partly random would train silently on noise
                missing = sorted(info["missing_keys"])
                raise ConfigError(f"{where}: the checkpoint lacks {len(missing)} vision weights, e.g. {missing[:3]}")
        else:
            self.model = AutoModel.from_config(vision_config)
        with torch.no_grad():
            probe = self.preprocess(Image.new("RGB", (8, 8)))[None]
            hidden = self._hidden(probe)
        grid = (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2
        self.num_prefix_tokens = int(hidden.shape[1]) - grid  # CLIP: 1 class token; SigLIP: none
        self.hidden_size = int(hidden.shape[2])
        self.num_features = grid if config.drop_cls else int(hidden.shape[1])

    def reload_spec(self, spec: dict[str, Any], checkpoint_dir: Path, modality: str) -> dict[str, Any]:
        """Save the tower's config and image processor into the checkpoint; its weights live in multimodal.safetensors."""
        from mmadapt.model import CHECKPOINT_REF

        relative = Path("encoders") / modality
        self.model.config.save_pretrained(str(Path(checkpoint_dir) / relative))
        self.processor.save_pretrained(str(Path(checkpoint_dir) / relative))
        return {**spec, "name_or_path": CHECKPOINT_REF + relative.as_posix(), "pretrained": False}

    def preprocess(self, raw: Any) -> torch.Tensor:
        return self.processor(images=load_image(raw), return_tensors="pt")["pixel_values"][0]  # [3, H, W]

    def _hidden(self, batch: torch.Tensor) -> torch.Tensor:
        states = self.model(pixel_values=batch, output_hidden_states=True).hidden_states  # (embeddings, block 0, ...)
        layer = self.config.layer
        return states[layer + 1] if layer >= 0 else states[layer]  # [B, prefix + N, D]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return select_tokens(self._hidden(batch), self.num_prefix_tokens, self.config.drop_cls)
