"""A model mmadapt composed, as a `LlavaForConditionalGeneration` + `LlavaProcessor` directory.

LLaVA is exactly "vision tower -> 2-layer GELU MLP -> causal LM, image features scattered at the image
token", so a composed model with an `hf_vision` CLIP or SigLIP tower and an `mlp` connector of depth 2
maps onto it weight for weight: the tower and the LLM's decoder become LLaVA's `vision_tower` and
`language_model` as they are, the connector's two Linear layers its `multi_modal_projector`. Which
layer the tower gives and whether its class token is dropped become `vision_feature_layer` and
`vision_feature_select_strategy`; the processor expands the image token to the connector's count.
Everything else (Q-Former, resampler, pooling, audio, video, timm / open_clip towers) has no LLaVA
equivalent and is refused by name, with the formats that model can be saved in.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)

HF_CLASS = "LlavaForConditionalGeneration"
# vision config model_type -> prefix (class) tokens its hidden states carry; LLaVA's "default" strategy drops one
TOWERS = {"clip_vision_model": 1, "siglip_vision_model": 0}
LLAVA_PARTS = ("an hf_vision CLIP or SigLIP tower for images + an `mlp` connector with depth 2, pool none and "
               "hidden_dim unset + any causal LM")
OTHER_FORMATS = ("save it in the mmadapt layout instead (`mmadapt export --model DIR --out OUT`, loaded with "
                 "MultimodalLM.from_pretrained), or export its LLM alone as a plain Hugging Face model "
                 "(`mmadapt export --model DIR --out OUT --merge-adapters`: OUT/llm)")


def llava_mismatches(model: Any) -> list[str]:
    """Every part of a composed model that LLaVA cannot hold, named by its config key (empty: it maps)."""
    from mmadapt.connectors.projector import MLPProjector
    from mmadapt.encoders.vision_hf import HFVisionEncoder

    specs = model.model_config
    problems = [f"model.encoders.{m}: {specs.encoders[m].get('name')!r} ({m} encoder); LLaVA takes images only"
                for m in model.encoders if m != "image"]
    if "image" not in model.encoders:
        return problems + ["no image encoder (a text-only model has no vision-language format)"]
    encoder, connector = model.encoders["image"], model.connectors["image"]
    name, cname = specs.encoders["image"].get("name"), specs.connectors["image"].get("name")
    if not isinstance(encoder, HFVisionEncoder):
        problems.append(f"model.encoders.image: {name!r} tower ({type(encoder).__name__}); LLaVA needs hf_vision")
    elif encoder.model.config.model_type not in TOWERS:
        problems.append(f"model.encoders.image: hf_vision tower of model_type {encoder.model.config.model_type!r}; "
                        f"LLaVA export supports {', '.join(TOWERS)}")
    if not isinstance(connector, MLPProjector):
        problems.append(f"model.connectors.image: {cname!r} ({type(connector).__name__}); LLaVA's projector is a "
                        "2-layer GELU MLP")
        return problems
    cfg = connector.config
    if cfg.depth != 2:
        problems.append(f"model.connectors.image.depth: {cfg.depth}; LLaVA's projector has exactly 2 layers")
    if cfg.pool != "none" and cfg.factor != 1:
        problems.append(f"model.connectors.image.pool: {cfg.pool!r} (factor {cfg.factor}); "
                        "LLaVA keeps every patch token")
    if cfg.hidden_dim not in (None, connector.out_dim):
        problems.append(f"model.connectors.image.hidden_dim: {cfg.hidden_dim}; LLaVA's projector is as wide as the "
                        f"LLM ({connector.out_dim})")
    return problems


def export_llava(model: Any, out_dir: str | Path, inputs: list[str | Path] | None = None,
                 overwrite: bool = False) -> Path:
    """Write `model` (a MultimodalLM whose parts map onto LLaVA) to `out_dir` as a transformers LLaVA checkpoint.

    LoRA adapters (LLM and tower) are folded into the weights first, in place: `model` is a plain model
    afterwards. Before anything is written, the LLaVA model (sharing this model's tensors, no copy) must
    reproduce its logits on a probe conversation with an image. `inputs`: directories the model came
    from, recorded in manifest.json (kind "export:hf"). An existing `out_dir` is replaced only if it holds
    an earlier export and `overwrite` is set.
    """
    from mmadapt.io import atomic_directory, check_output_dir
    from mmadapt.lineage import write_manifest
    from mmadapt.adapters import has_adapters, merge_adapters

    problems = llava_mismatches(model)
    if problems:
        raise ConfigError(f"export --format hf: this model has parts with no Hugging Face equivalent: "
                          f"{'; '.join(problems)}. {HF_CLASS} takes {LLAVA_PARTS}. {OTHER_FORMATS}")
    out = Path(out_dir)
    check_output_dir(out, "export", overwrite)
    had_adapters = has_adapters(model.llm) or has_adapters(model.encoders)
    merge_adapters(model)
    hf, processor = to_llava(model), llava_processor(model)
    check_logits(model, hf, processor)
    with atomic_directory(out) as tmp:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        processor.save_pretrained(str(tmp))
        write_manifest(tmp, kind="export:hf", inputs=list(inputs or []), final_path=out, config={
            "format": "hf", "hf_class": HF_CLASS, "merged_adapters": had_adapters,
            "vision_feature_layer": hf.config.vision_feature_layer,
            "vision_feature_select_strategy": hf.config.vision_feature_select_strategy,
            "image_seq_length": hf.config.image_seq_length})
    logger.info("exported the composed model as %s -> %s", HF_CLASS, out)
    return out


def _feature_options(encoder: Any) -> tuple[int, str]:
    """(vision_feature_layer, vision_feature_select_strategy) equal to the encoder's layer and drop_cls."""
    layer = encoder.config.layer
    # mmadapt counts blocks (0 = first block); HF hidden_states start with the embeddings, and -1 is the same for both
    feature_layer = layer + 1 if layer >= 0 else layer
    strategy = "default" if encoder.config.drop_cls and encoder.num_prefix_tokens == 1 else "full"
    return feature_layer, strategy


def to_llava(model: Any) -> nn.Module:
    """A LlavaForConditionalGeneration whose modules are this model's own (shared, not copied)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    encoder, connector, llm = model.encoders["image"], model.connectors["image"], model.llm
    decoder, head = llm.base_model, llm.get_output_embeddings()
    if decoder is llm or not isinstance(head, nn.Linear) or head.bias is not None:
        raise ConfigError(f"export --format hf: {type(llm).__name__} is not a decoder + bias-free linear LM head, "
                          f"which {HF_CLASS} needs. {OTHER_FORMATS}")
    embed = llm.get_input_embeddings()
    # LLaVA ties lm_head to `language_model.embed_tokens` by that name only: other tied LMs get their own head copy
    tie = head.weight is embed.weight and getattr(decoder, "embed_tokens", None) is embed
    text_config = copy.deepcopy(llm.config)
    text_config.tie_word_embeddings = tie
    feature_layer, strategy = _feature_options(encoder)
    config = LlavaConfig(
        vision_config=copy.deepcopy(encoder.model.config), text_config=text_config,
        image_token_id=model.placeholder_id("image"), image_seq_length=model.num_media_tokens("image"),
        vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tie)
    with torch.device("meta"):  # the structure only: every module is replaced by this model's own below
        hf = LlavaForConditionalGeneration(config)
    for part, ours in (("vision_tower", encoder.model), ("language_model", decoder)):
        expected, found = set(getattr(hf.model, part).state_dict()), set(ours.state_dict())
        if expected != found:
            raise ConfigError(f"export --format hf: {HF_CLASS}.{part} built from the config does not hold "
                              f"{type(ours).__name__}'s weights (missing {sorted(expected - found)[:3]}, unexpected "
                              f"{sorted(found - expected)[:3]}). {OTHER_FORMATS}")
        setattr(hf.model, part, ours)
    projector = LlavaMultiModalProjector(config).to(dtype=connector.mlp[0].weight.dtype)
    # MLPProjector.mlp = [Linear, GELU, Linear]; LLaVA's projector = linear_1, act (exact GELU), linear_2
    linears = (connector.mlp[0], connector.mlp[2])
    projector.load_state_dict({f"linear_{i + 1}.{k}": v for i, layer in enumerate(linears)
                               for k, v in layer.state_dict().items()})
    hf.model.multi_modal_projector = projector
    # LLaVA's own tie or an untied head: the module itself; tied under other names (GPT-2's wte): a copy of its own
    hf.lm_head = head if tie or head.weight is not embed.weight else copy.deepcopy(head)
    if getattr(llm, "generation_config", None) is not None:
        hf.generation_config = copy.deepcopy(llm.generation_config)
    # stop and pad as MultimodalLM.generate does: with the tokenizer's tokens, whatever the LLM's config says
    hf.generation_config.eos_token_id = model.tokenizer.eos_token_id
    hf.generation_config.pad_token_id = model.tokenizer.pad_token_id
    hf.config.dtype = llm.dtype
    left = [n for n, p in hf.named_parameters() if p.is_meta]
    if left:  # every parameter of the LLaVA structure must now be this model's
        raise ConfigError(f"export --format hf: {HF_CLASS} has parameters this model does not provide: {left[:5]}")
    return hf


def vision_chat_template(template: str, image_token: str) -> str:
    """`template` (written for string contents) for content lists too: an image part becomes `image_token`,
    a text part its text; string contents pass unchanged. Renders what mmadapt trained on."""
    prelude = (
        "{% set ns = namespace(messages=[]) %}{% for message in messages %}"
        "{% if message['content'] is string %}{% set ns.messages = ns.messages + [message] %}"
        "{% else %}{% set text = namespace(value='') %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{% set text.value = text.value + " + repr(image_token) + " %}"
        "{% elif part['type'] == 'text' %}{% set text.value = text.value + part['text'] %}{% endif %}{% endfor %}"
        "{% set ns.messages = ns.messages + [dict(message, content=text.value)] %}{% endif %}{% endfor %}"
        "{% set messages = ns.messages %}{{ '' }}"  # {{ '' }}: trim_blocks must not eat the template's first newline
    )
    return prelude + template


def llava_processor(model: Any) -> Any:
    """A LlavaProcessor: the tower's own image processor, the model's tokenizer and its image token."""
    from transformers import LlavaProcessor

    from mmadapt.data.templates import CHATML_TEMPLATE

    encoder = model.encoders["image"]
    tokenizer = copy.deepcopy(model.tokenizer)  # the chat template changes on the copy only
    image_token = tokenizer.convert_ids_to_tokens(model.placeholder_id("image"))
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else CHATML_TEMPLATE
    template = vision_chat_template(own, image_token)
    tokenizer.chat_template = template
    _, strategy = _feature_options(encoder)
    return LlavaProcessor(image_processor=copy.deepcopy(encoder.processor), tokenizer=tokenizer,
                          patch_size=int(encoder.model.config.patch_size), vision_feature_select_strategy=strategy,
                          num_additional_image_tokens=encoder.num_prefix_tokens, image_token=image_token,
                          chat_template=template)


@torch.no_grad()
def check_logits(model: Any, hf: nn.Module, processor: Any) -> float:
    """max |logits(LLaVA) - logits(model)| on a probe conversation with an image; refuses the export if they differ."""
    import numpy as np
    from PIL import Image

    side = 2 * int(model.encoders["image"].model.config.image_size)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side + 8, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\ndescribe it"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    count, expected = int((ids == model.placeholder_id("image")).sum()), model.num_media_tokens("image")
    if count != expected:
        raise ConfigError(f"export --format hf: the LlavaProcessor expands one image to {count} tokens but the "
                          f"connector gives {expected}; the tower's image processor output {tuple(pixels.shape[-2:])} "
                          "does not match its config's image_size")
    was_training = model.training
    model.eval()
    try:
        ours = model(input_ids=ids, attention_mask=inputs["attention_mask"], media={"image": pixels}).logits
        theirs = hf(**inputs).logits
    finally:
        model.train(was_training)
    diff = float((ours.float() - theirs.float()).abs().max())
    scale = max(1.0, float(ours.float().abs().max()))
    tolerance = 1e-5 if ours.dtype == torch.float32 else 2e-2
    if not diff <= tolerance * scale:
        raise ConfigError(f"export --format hf: {HF_CLASS} does not reproduce this model's logits (max |diff| "
                          f"{diff:.3g}); {type(model.llm).__name__}'s head does more than a linear layer (logit "
                          f"scaling or soft-capping?). {OTHER_FORMATS}")
    return diff
