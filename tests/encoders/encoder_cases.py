"""Encoder contract cases: tiny specs (offline, random weights) for every registered encoder name.

Extension point: another modality's cases live in `cases_<modality>.py` beside this file, which defines
`CASES: list[EncoderCase]`; they are appended to TEST_CASES below, and test_encoder_contract.py runs the
whole contract on them (a registered encoder without a case fails `test_every_registered_encoder_has_a_case`).
`spec(folder)` may write tiny checkpoints under `folder`; `raw(folder)` returns one item for `preprocess`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmadapt.quickstart.tiny import tiny_vit_encoder


@dataclass
class EncoderCase:
    id: str
    name: str  # the registry name this case covers
    spec: Callable[[Path], dict[str, Any]]  # -> {name, **kwargs}
    raw: Callable[[Path], Any]  # -> one raw item (a file path, bytes or array)
    modality: str = "image"


def png_file(folder: Path, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """A random RGB PNG (non-square, so resizing and cropping are exercised)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    path = Path(folder) / f"image_{seed}.png"
    Image.fromarray(pixels).save(path)
    return path


TINY_TEXT_CFG = {"width": 32, "layers": 1, "heads": 2, "vocab_size": 64, "context_length": 8}


def tiny_openclip_vit(**options: Any) -> dict[str, Any]:
    return {"name": "openclip", "model_name": "ViT-B-32", **options, "model_overrides": {
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": TINY_TEXT_CFG}}


def tiny_openclip_resnet(**options: Any) -> dict[str, Any]:
    return {"name": "openclip", "model_name": "RN50", **options, "model_overrides": {
        "embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
        "text_cfg": TINY_TEXT_CFG}}


HF_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8}


def save_hf_tower(folder: Path, family: str = "clip", full: bool = False) -> Path:
    """A tiny CLIP / SigLIP vision tower (or a full dual encoder) with its image processor, saved under `folder`."""
    import transformers as tf

    out = Path(folder) / f"{family}{'_full' if full else ''}"
    if family == "clip":
        processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 64}
        model = (tf.CLIPModel(tf.CLIPConfig(vision_config=HF_TOWER, text_config=text, projection_dim=16)) if full
                 else tf.CLIPVisionModel(tf.CLIPVisionConfig(**HF_TOWER)))
    elif family == "siglip":
        processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**HF_TOWER))
    else:
        raise ValueError(family)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def hf_spec(family: str, **options: Any) -> Callable[[Path], dict[str, Any]]:
    return lambda folder: {"name": "hf_vision", "name_or_path": str(save_hf_tower(folder, family)), **options}


TEST_CASES: list[EncoderCase] = [
    EncoderCase("timm_vit", "timm", lambda folder: tiny_vit_encoder(), png_file),
    EncoderCase("openclip_vit", "openclip", lambda folder: tiny_openclip_vit(layer=-2), png_file),
    EncoderCase("openclip_resnet", "openclip", lambda folder: tiny_openclip_resnet(), png_file),
    EncoderCase("hf_clip", "hf_vision", hf_spec("clip", layer=-2), png_file),
    EncoderCase("hf_siglip", "hf_vision", hf_spec("siglip"), png_file),
]
for _module in sorted(Path(__file__).parent.glob("cases_*.py")):
    TEST_CASES += importlib.import_module(_module.stem).CASES


def tiny_model_config(folder: Path, encoder_spec: dict[str, Any], modality: str = "image",
                      connector_spec: dict[str, Any] | None = None):
    """A ModelConfig for a tiny Llama + the given encoder (+ an MLP connector), with an offline tokenizer."""
    from mmadapt.config import LLMConfig, ModelConfig
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    tokenizer_dir = Path(folder) / "tokenizer"
    train_word_tokenizer(["what is in the picture ? a red square"], out_dir=tokenizer_dir)
    return ModelConfig(
        llm=LLMConfig(config=tiny_llm_config(hidden=32, heads=2), tokenizer=str(tokenizer_dir)),
        encoders={modality: encoder_spec},
        connectors={modality: connector_spec or {"name": "mlp"}},
    )
