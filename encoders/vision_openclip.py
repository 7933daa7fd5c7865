"""open_clip vision towers: any open_clip model name, a pretrained tag (online) or local checkpoint, or random weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmadapt.encoders.base import BaseEncoder, VisionOptions, load_image
from mmadapt.errors import ConfigError
from mmadapt.io import read_json

CONFIG_FILE = "open_clip_config.json"  # open_clip's own layout for "local-dir:" / "hf-hub:" models


@dataclass
class OpenClipConfig(VisionOptions):
    # A built-in name (open_clip.list_models()), "hf-hub:org/repo", "local-dir:/path" or a folder with open_clip_config.json.
    model_name: str = "ViT-B-16"
    # A tag such as "openai" (online) or a full-model checkpoint file; None: random weights.
    pretrained: str | None = None
    # Deep-merged into the model config, e.g. {vision_cfg: {layers: 2}}.
    model_overrides: dict[str, Any] = field(default_factory=dict)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _model_config(model_name: str) -> dict[str, Any]:
    """The architecture config open_clip builds for `model_name` (built-in table, local folder or hub repo)."""
    import open_clip
    from open_clip.factory import _get_hf_config, parse_model_name

    schema, identifier = parse_model_name(model_name)
    if schema == "local-dir":
        path = Path(identifier) / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"encoder openclip model_name={model_name!r}: {path} does not exist")
        config = read_json(path, f"encoder openclip model_name={model_name!r}: {CONFIG_FILE}", ConfigError, expect=dict)
        if not isinstance(config.get("model_cfg"), dict):
            raise ConfigError(f"encoder openclip model_name={model_name!r}: {path} has no 'model_cfg' object "
                              "(an open_clip config holds model_cfg and preprocess_cfg)")
        return config["model_cfg"]
    if schema == "hf-hub":
        try:
            return _get_hf_config(identifier)["model_cfg"]
        except OSError as e:  # not on the hub, or offline without a cached copy
            raise ConfigError(f"encoder openclip model_name={model_name!r}: {e}") from e
    config = open_clip.get_model_config(identifier.replace("/", "-"))
    if config is None:
        raise ConfigError(f"encoder openclip model_name={model_name!r} is unknown; valid: open_clip.list_models(), "
                          f"'hf-hub:org/repo', 'local-dir:/path'")
    return config


class OpenClipEncoder(BaseEncoder):
    """Patch tokens of an open_clip image tower (ViT, timm trunk or ResNet) at block `layer` (-1: the last)."""

    config_class = OpenClipConfig

    def __init__(self, config: OpenClipConfig) -> None:
        super().__init__(config)
        import open_clip

        name = config.model_name
        if Path(name).is_dir():  # a folder in open_clip's export layout, e.g. a saved mmadapt checkpoint's encoder
            name = f"local-dir:{name}"
        base = _model_config(name)
        # open_clip replaces top-level config keys wholesale: merge, so {vision_cfg: {layers: 2}} keeps the rest.
        overrides = {k: _deep_merge(base.get(k, {}), v) if isinstance(v, dict) else v
                     for k, v in config.model_overrides.items()}
        if "vision_cfg" in overrides:
            overrides["vision_cfg"]["patch_dropout"] = 0.0  # force_patch_dropout acts on the config this replaces
        self.model_cfg = {**base, **overrides}  # what reload_spec saves
        try:
            model, _, self.transform = open_clip.create_model_and_transforms(
                name,
                pretrained=config.pretrained,
                pretrained_text=False,  # the text tower is discarded: never download its base weights
                force_patch_dropout=0.0,  # patch dropout would make the token count vary in training mode
                **overrides,
            )
        except (RuntimeError, FileNotFoundError, ValueError) as e:
            where = f"encoder openclip model_name={config.model_name!r} pretrained={config.pretrained!r}"
            raise ConfigError(f"{where}: {e}") from e
        self.visual = model.visual  # the text tower and logit scale are not needed
        with torch.no_grad():
            probe = self.preprocess(Image.new("RGB", (8, 8)))[None]
            try:
                features = self.forward(probe)
            except AssertionError as e:  # open_clip checks the layer index with an assert
                raise ConfigError(f"encoder openclip layer={config.layer}: {e}") from e
        self.num_features, self.hidden_size = int(features.shape[1]), int(features.shape[2])

    def reload_spec(self, spec: dict[str, Any], checkpoint_dir: Path, modality: str) -> dict[str, Any]:
        """Save the architecture and the preprocessing (a pretrained tag sets its own mean/std) into the checkpoint."""
        from mmadapt.io import atomic_write_json
        from mmadapt.model import CHECKPOINT_REF

        relative = Path("encoders") / modality
        saved = {"model_cfg": self.model_cfg, "preprocess_cfg": self.visual.preprocess_cfg}
        atomic_write_json(Path(checkpoint_dir) / relative / CONFIG_FILE, saved)
        return {**spec, "model_name": CHECKPOINT_REF + relative.as_posix(), "pretrained": None, "model_overrides": {}}

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
