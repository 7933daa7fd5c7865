"""Generation from a prompt and media, batched exact-match evaluation, and `mmadapt generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmadapt.data.collator import pad
from mmadapt.data.conversations import IGNORE_INDEX, expand_placeholders, media_list, resolve_media
from mmadapt.data.templates import ensure_chat_template, render, to_messages
from mmadapt.errors import DataError
from mmadapt.eval.metrics import accuracy, normalize_answer  # noqa: F401 (the one copy, re-exported)
from mmadapt.model import PLACEHOLDERS, with_model_placeholders



def encode_prompt(model: Any, messages: list[dict[str, str]], media: dict[str, list[Path]]) -> list[int]:
    """Token ids of `messages` + the generation prompt, placeholders expanded."""
    ensure_chat_template(model.tokenizer)
    text = render(model.tokenizer, with_model_placeholders(model, messages), add_generation_prompt=True)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for modality, items in media.items():
        expected = sum(m["content"].count(PLACEHOLDERS[modality]) for m in messages)
        if expected != len(items):
            raise DataError(f"{expected} {PLACEHOLDERS[modality]} placeholder(s) in the prompt but {len(items)} {modality} item(s)")
        ids, labels = expand_placeholders(ids, labels, model.placeholder_id(modality), model.num_media_tokens(modality))
    return ids


@torch.no_grad()
def generate_batch(model: Any, prompts: list[tuple[list[dict[str, str]], dict[str, list[Any]]]],
                   max_new_tokens: int = 16, **generate_kwargs: Any) -> list[str]:
    """Answers for a batch of (messages, {modality: [raw items]}), greedy decoding; `generate_kwargs` (logits
    processors, stopping criteria) go to HF `generate` (the server samples and streams through them)."""
    model.eval()
    processor = getattr(model, "processor", None)
    if processor is not None:  # an HF vision-language model: its processor tokenises, expands and pads
        from mmadapt.hf.processing import encode_prompts

        inputs = encode_prompts(processor, prompts).to(model.device)
        media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        new_tokens = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], media=media,
                                    max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
        return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
    ids = [encode_prompt(model, messages, media) for messages, media in prompts]
    input_ids = pad(ids, model.tokenizer.pad_token_id, left=True).to(model.device)
    attention_mask = pad([[1] * len(i) for i in ids], 0, left=True).to(model.device)
    media_tensors: dict[str, list[torch.Tensor]] = {}
    for _, media in prompts:
        for modality, items in media.items():
            media_tensors.setdefault(modality, []).extend(model.encoders[modality].preprocess(i) for i in items)
    stacked = {m: torch.stack(t) for m, t in media_tensors.items()}
    new_tokens = model.generate(input_ids, attention_mask=attention_mask, media=stacked or None,
                                max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def split_record(model: Any, where: str, record: dict[str, Any], root: Path) -> tuple[list[dict[str, str]], dict, str]:
    """A conversation record -> (prompt messages up to the last assistant turn, media paths, reference answer)."""
    messages = to_messages(record.get("conversations") or [], where)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    media = {}
    for modality in getattr(model, "modalities", model.encoders):
        items = media_list(record, modality, where)
        if items:
            media[modality] = [resolve_media(i, root, where, modality) for i in items]
    return messages[:last], media, messages[last]["content"]


def exact_match(model: Any, records: list[tuple[str, dict[str, Any]]], root: str | Path, batch_size: int = 64,
                max_new_tokens: int = 8, desc: str = "evaluating") -> tuple[float, list[tuple[str, str]]]:
    """Exact-match accuracy (normalised) of greedy answers; also returns (prediction, reference) pairs."""
    root = Path(root)
    pairs: list[tuple[str, str]] = []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, leave=False):
        chunk = [split_record(model, w, r, root) for w, r in records[start:start + batch_size]]
        answers = generate_batch(model, [(m, media) for m, media, _ in chunk], max_new_tokens=max_new_tokens)
        pairs.extend(zip(answers, [ref for _, _, ref in chunk]))
    return accuracy([p for p, _ in pairs], [r for _, r in pairs]), pairs
