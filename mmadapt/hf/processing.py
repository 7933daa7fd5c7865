"""Conversations -> token ids, labels and pixel tensors through a Hugging Face VLM's own processor.

Our records mark an image with `<image>` in the text (LLaVA format); here each becomes an image
part of the family's chat template, which writes the family's own image token (`<image>`,
`<|vision_start|><|image_pad|><|vision_end|>`, ...). The processor then expands every image token
to as many positions as that image needs (AnyRes tiles, dynamic resolution, image splitting).
Assistant-only labels are still located by character offsets in the rendered text (templates.py);
they are carried onto the expanded sequence by walking both token sequences, image by image, and
checking that every text token lands on itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mmadapt.config import DataConfig
from mmadapt.data.chat_templates import NAMED_TEMPLATES, resolve_chat_template
from mmadapt.data.conversations import Example, RecordBuilder, media_list, resolve_media
from mmadapt.data.templates import assistant_spans, to_messages
from mmadapt.data.tokenisation import IGNORE_INDEX
from mmadapt.errors import DataError

logger = logging.getLogger(__name__)
IMAGE_MARKER = "<image>"  # where an image goes in our records' text


def to_hf_messages(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """{role, content: "<image>\\ntext"} -> {role, content: [{"type": "image"}, {"type": "text", ...}]}."""
    result = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        pieces = message["content"].split(IMAGE_MARKER)
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        result.append({"role": message["role"], "content": parts})
    return result


def load_image(path: str | Path, where: str = "") -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{where}: cannot decode image {path}: {e}") from e


def add_special_tokens_for(tokenizer: Any, text: str) -> bool:
    """As transformers' processors decide: a rendered prompt that already starts with BOS gets no second one."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos is not None and text.startswith(bos))


def image_token_ids(processor: Any) -> set[int]:
    """Every id the processor writes in place of an image (its image token, plus any it declares)."""
    tokenizer = processor.tokenizer
    ids = set()
    for attr in ("image_token", "fake_image_token", "global_image_token"):
        token = getattr(processor, attr, None)
        token = getattr(token, "content", token)
        if isinstance(token, str):
            ids.add(tokenizer.convert_tokens_to_ids(token))
    return ids


def expansion_lengths(processor: Any, images: list[Any], add_special: bool) -> list[int]:
    """How many positions each image takes in the processed sequence (0-context: depends on the image only)."""
    tokenizer = processor.tokenizer
    marker = _image_token(processor)
    base = len(tokenizer(marker, add_special_tokens=add_special)["input_ids"])
    lengths = []
    for image in images:
        ids = processor(text=[marker], images=[[image]] if _nested(processor) else [image],
                        add_special_tokens=add_special)["input_ids"][0]
        lengths.append(len(ids) - base + 1)
    return lengths


def _image_token(processor: Any) -> str:
    token = getattr(processor, "image_token", None)
    token = getattr(token, "content", token)
    if not isinstance(token, str):
        raise DataError(f"{type(processor).__name__} declares no image_token; cannot place images")
    return token


def _nested(processor: Any) -> bool:
    """Idefics3-style processors take one list of images per text."""
    return type(processor).__name__.startswith("Idefics")


def process_images(processor: Any, texts: list[str], images: list[list[Any]], add_special: bool) -> dict[str, Any]:
    """The processor over a batch: input_ids and the family's pixel tensors."""
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "add_special_tokens": add_special}
    if any(images):
        kwargs["images"] = images if _nested(processor) else [im for row in images for im in row]
    return processor(**kwargs)


def align_labels(plain_ids: list[int], labels: list[int], expanded: list[int], image_id: int,
                 lengths: list[int], where: str) -> list[int]:
    """Carry labels from the unexpanded sequence (one image token per image) onto the processor's sequence."""
    out: list[int] = []
    j, image = 0, 0
    for tok, lab in zip(plain_ids, labels):
        if tok == image_id:
            if image >= len(lengths):
                raise DataError(f"{where}: more image tokens in the text than images")
            out.extend([IGNORE_INDEX] * lengths[image])
            j += lengths[image]
            image += 1
            continue
        if j >= len(expanded) or expanded[j] != tok:
            raise DataError(f"{where}: the processor's sequence does not match the rendered text at token {j}; "
                            "its image expansion could not be aligned with the conversation")
        out.append(lab)
        j += 1
    if j != len(expanded):
        raise DataError(f"{where}: the processor's sequence has {len(expanded)} tokens, the aligned text {j}")
    return out


def use_chat_template(processor: Any, data_cfg: DataConfig) -> None:
    """The processor's own chat template, or `data.chat_template` (a tokenizer/processor directory, a .jinja file or
    Jinja source). The named text-only templates do not place image parts, so a name is refused for a model.vlm."""
    value = data_cfg.chat_template
    if value is not None:
        if value in NAMED_TEMPLATES:
            raise DataError(f"data.chat_template: {value!r} is a text-only template; a model.vlm renders images with "
                            "its processor's template (leave data.chat_template unset), a directory, a .jinja file or "
                            "Jinja source that writes the image parts")
        processor.chat_template = resolve_chat_template(value)
    if not getattr(processor, "chat_template", None):
        raise DataError(f"{type(processor).__name__} has no chat_template; set data.chat_template")


def record_images(record: dict[str, Any], messages: list[dict[str, str]], root: Path, where: str) -> list[Path]:
    """A record's image files, checked: one per <image> marker in `messages`, present on disk; no audio or video."""
    for modality in ("audio", "video"):
        if record.get(modality) is not None:
            raise DataError(f"{where}: has {modality}, but this vision-language model takes images only")
    items = media_list(record, "image", where)
    n_markers = sum(m["content"].count(IMAGE_MARKER) for m in messages)
    if n_markers != len(items):
        raise DataError(f"{where}: {n_markers} {IMAGE_MARKER} placeholder(s) in the text but {len(items)} image(s); "
                        f"put one {IMAGE_MARKER} where each image goes")
    return [resolve_media(item, root, where, "image") for item in items]


class ProcessedExampleBuilder(RecordBuilder):
    """Raw conversation records -> Examples for one HF processor (same checks as ExampleBuilder)."""

    def __init__(self, processor: Any, data_cfg: DataConfig, data_file: str | Path) -> None:
        super().__init__(processor.tokenizer, data_cfg, data_file)
        self.processor = processor
        use_chat_template(processor, data_cfg)
        self.image_id = self.tokenizer.convert_tokens_to_ids(_image_token(processor))

    def build(self, records: list[tuple[str, dict[str, Any]]]) -> list[Example]:
        return self.build_with(records, self.build_one)

    def build_one(self, where: str, record: dict[str, Any]) -> Example | None:
        if self.cfg.format != "conversations":
            raise DataError(f"{where}: data.format {self.cfg.format!r} is not supported for model.vlm; "
                            "use conversations (or preference with a preference objective)")
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: missing 'conversations' (a list of {{from, value}} turns)")
        messages = to_messages(turns, where)
        paths = record_images(record, messages, self.root, where)
        images = [load_image(p, where) for p in paths]
        input_ids, labels = self.encode(messages, images, where)
        example = Example(where, input_ids, labels, {"image": paths} if paths else {})
        return self._truncate(example)

    def encode(self, messages: list[dict[str, str]], images: list[Any], where: str) -> tuple[list[int], list[int]]:
        """(processor input ids, labels on assistant replies only) of one conversation."""
        text, spans = assistant_spans(self.processor, to_hf_messages(messages))
        add_special = add_special_tokens_for(self.tokenizer, text)
        plain = self.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        labels = [tok if any(s <= a and b <= e and b > a for s, e in spans) else IGNORE_INDEX
                  for tok, (a, b) in zip(plain["input_ids"], plain["offset_mapping"])]
        if not images:
            return list(plain["input_ids"]), labels
        expanded = process_images(self.processor, [text], [images], add_special)["input_ids"][0].tolist()
        lengths = ([len(expanded) - len(plain["input_ids"]) + 1] if len(images) == 1
                   else expansion_lengths(self.processor, images, add_special))
        return expanded, align_labels(list(plain["input_ids"]), labels, expanded, self.image_id, lengths, where)

    def _truncate(self, example: Example) -> Example | None:
        return self.truncate(example, lambda limit: bool(example.media))  # image tokens can sit anywhere in the text


def media_batch(processor: Any, examples: list[Any]) -> dict[str, torch.Tensor]:
    """The processor's pixel tensors (pixel_values, image_sizes, image_grid_thw, ...) for a batch's images, in
    placeholder order. Pixel tensors depend on the images only, so each sample's text is just its image tokens."""
    images = [[load_image(p, e.where) for p in e.media.get("image", [])] for e in examples]
    if not any(images):
        return {}
    token = _image_token(processor)
    processed = process_images(processor, [token * len(row) for row in images], images, add_special=False)
    return {k: v for k, v in processed.items() if k not in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")}


def encode_prompts(processor: Any, prompts: list[tuple[list[dict[str, str]], dict[str, list[Any]]]]) -> dict[str, Any]:
    """Left-padded processor inputs for generation from (messages, {"image": [paths]}) prompts."""
    texts, images = [], []
    for messages, media in prompts:
        unknown = set(media) - {"image"}
        if unknown:
            raise DataError(f"this vision-language model takes images only, got {sorted(unknown)}")
        paths = media.get("image", [])
        n_markers = sum(m["content"].count(IMAGE_MARKER) for m in messages)
        if n_markers != len(paths):
            raise DataError(f"{n_markers} {IMAGE_MARKER} placeholder(s) in the prompt but {len(paths)} image(s)")
        texts.append(processor.apply_chat_template(to_hf_messages(messages), tokenize=False, add_generation_prompt=True))
        images.append([p if not isinstance(p, (str, Path)) else load_image(p) for p in paths])
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return process_images(processor, texts, images, add_special_tokens_for(tokenizer, texts[0]))
    finally:
        tokenizer.padding_side = side
