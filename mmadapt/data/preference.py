"""Preference pairs `{prompt, chosen, rejected}` and KTO samples `{prompt, completion, label}`: checked, tokenised.

A prompt is a string (one user turn) or a list of turns (multi-turn, ending with a user turn);
a completion is a string (or one assistant turn). Both go through the chat template: the prompt
rendered with the generation prompt, the completion as the rest of the rendered conversation
(reply + end-of-turn marker), tokenised separately so chosen and rejected share the prompt tokens
exactly. Media (`image` / `audio` / `video`) belong to the prompt and are collated once per pair.
Errors name the file and line; pairs whose prompt leaves no room within max_length are dropped
and counted (`dropped_prompt_too_long`), like every other drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmadapt.data.collator import FeatureCaches, collate_media, pad
from mmadapt.data.conversations import SpecBuilder, record_media
from mmadapt.data.formats import read_dataset
from mmadapt.data.templates import parse_turn, render
from mmadapt.data.tokenisation import IGNORE_INDEX, PLACEHOLDERS, TokenisationSpec
from mmadapt.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PreferenceExample:
    where: str  # "file:line", also the key of cached reference log-probs
    prompt_ids: list[int]  # placeholders expanded
    chosen_ids: list[int]
    rejected_ids: list[int]
    media: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class KTOExample:
    where: str
    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    media: dict[str, list[Path]] = field(default_factory=dict)
    kl_completion_ids: list[int] = field(default_factory=list)  # another sample's completion: the KL estimate's row


def prompt_messages(prompt: Any, where: str) -> list[dict[str, str]]:
    """A prompt string or a list of turns ({from, value} or {role, content}) -> chat messages ending with the user."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: missing 'prompt' (a string, or a list of {{from, value}} turns)")
    messages = [parse_turn(turn, where, f"prompt[{i}]") for i, turn in enumerate(prompt)]
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: a multi-turn prompt must end with a user ('human') turn")
    return messages


def completion_text(value: Any, where: str, key: str) -> str:
    """A completion string (or a one-turn assistant list, TRL's conversational form); empty is an error."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = parse_turn(value[0], where, f"{key}[0]")
        if message["role"] != "assistant":
            raise DataError(f"{where}: '{key}' must be a string or one assistant turn, got role {message['role']!r}")
        value = message["content"]
    if value is None:
        raise DataError(f"{where}: missing '{key}' (the completion text)")
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: '{key}' is empty")
    return value


class PreferenceTokenizer(SpecBuilder):
    """Tokenises prompts (with media placeholders expanded) and completions for one tokenisation spec and data config."""

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)

    def prompt(
        self, where: str, record: dict[str, Any]
    ) -> tuple[list[dict[str, str]], list[int], dict[str, list[Path]]]:
        """A record's prompt: (chat messages, token ids with placeholders expanded, {modality: media paths})."""
        messages = prompt_messages(record.get("prompt"), where)
        ids = self._ids(self.render(self.spec.with_placeholders(messages), add_generation_prompt=True))
        ids, _, media = record_media(self.spec, record, messages, self.root, where, "prompt", ids, ids)
        return messages, ids, media

    def completion(self, where: str, messages: list[dict[str, str]], value: Any, key: str) -> list[int]:
        """Token ids of the reply as the template renders it after `messages` (text + end-of-turn marker)."""
        text = completion_text(value, where, key)
        for placeholder in PLACEHOLDERS.values():
            if placeholder in text:
                raise DataError(f"{where}: '{key}' contains {placeholder}; media belong in the prompt")
        prompt = self.render(messages, add_generation_prompt=True)
        full = self.render(messages + [{"role": "assistant", "content": text}])
        if not full.startswith(prompt):
            raise DataError(f"{where}: the chat template does not render prompt + reply prefix-consistently; "
                            "set data.chat_template to a template that does")
        reply = full[len(prompt):]
        # The trailing newline after the end-of-turn marker belongs to the next turn (as in templates.py).
        return self._ids(reply[:-1] if reply.endswith("\n") else reply)

    def budget(self, where: str, prompt_ids: list[int]) -> int | None:
        """Completion tokens that fit after the prompt, or None (the pair is dropped and counted)."""
        room = self.cfg.max_length - len(prompt_ids)
        if room < 1:
            self.stats.counts["dropped_prompt_too_long"] += 1
            logger.warning("%s: dropped, the prompt (%d tokens) leaves no room for a completion within max_length=%d",
                           where, len(prompt_ids), self.cfg.max_length)
            return None
        return room



def _pair(tok: PreferenceTokenizer, where: str, record: dict[str, Any]) -> PreferenceExample | None:
    messages, prompt_ids, media = tok.prompt(where, record)
    chosen = tok.completion(where, messages, record.get("chosen"), "chosen")
    rejected = tok.completion(where, messages, record.get("rejected"), "rejected")
    if chosen == rejected:
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical; a pair must differ")
    room = tok.budget(where, prompt_ids)
    if room is None:
        return None
    if len(chosen) > room or len(rejected) > room:
        tok.stats.counts["truncated"] += 1
        chosen, rejected = chosen[:room], rejected[:room]
        if chosen == rejected:
            tok.stats.counts["dropped_identical_after_truncation"] += 1
            logger.warning("%s: dropped, chosen and rejected are identical within max_length=%d",
                           where, tok.cfg.max_length)
            return None
    return PreferenceExample(where, prompt_ids, chosen, rejected, media)


def read_preference_records(
    path: str | list[str], tok: PreferenceTokenizer, stats_prefix: str
) -> tuple[list[PreferenceExample], dict[str, float]]:
    """Tokenised preference pairs from data files / registered datasets (any layout of mmadapt.data.formats, several
    mixed by data.weights) and the data statistics (drops, truncations)."""
    examples = tok.build_with(read_dataset(path, tok.cfg, "preference"), lambda where, record: _pair(tok, where, record))
    return examples, tok.stats.as_metrics(stats_prefix)


def _kto(tok: PreferenceTokenizer, where: str, record: dict[str, Any]) -> KTOExample | None:
    label = record.get("label")
    if not isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be true (desirable) or false (undesirable), got {label!r}")
    messages, prompt_ids, media = tok.prompt(where, record)
    completion = tok.completion(where, messages, record.get("completion"), "completion")
    room = tok.budget(where, prompt_ids)
    if room is None:
        return None
    if len(completion) > room:
        tok.stats.counts["truncated"] += 1
    tok.stats.counts["desirable" if label else "undesirable"] += 1
    return KTOExample(where, prompt_ids, completion[:room], label, media)


def _kl_partner(examples: list[KTOExample], i: int) -> KTOExample:
    """The next sample (cyclically) with a different prompt: its completion is a mismatched one for sample i."""
    n = len(examples)
    for step in range(1, n):  # stops after the run of samples sharing this prompt
        other = examples[(i + step) % n]
        if other.prompt_ids != examples[i].prompt_ids:
            return other
    return examples[(i + 1) % n]


def read_kto_records(
    path: str | list[str], tok: PreferenceTokenizer, stats_prefix: str
) -> tuple[list[KTOExample], dict[str, float]]:
    """Tokenised KTO samples; each gets the completion of the next sample with another prompt as its fixed KL row."""
    examples = tok.build_with(read_dataset(path, tok.cfg, "kto"), lambda where, record: _kto(tok, where, record))
    if len(examples) == 1:
        logger.warning("%s: one KTO sample, so its KL row is its own completion", path)
    one_prompt = len({tuple(e.prompt_ids) for e in examples}) == 1
    for i, example in enumerate(examples):
        other = (examples[(i + 1) % len(examples)] if one_prompt else _kl_partner(examples, i)).completion_ids
        example.kl_completion_ids = other[: tok.cfg.max_length - len(example.prompt_ids)]
    return examples, tok.stats.as_metrics(stats_prefix)


def _rows(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """prompt + completion rows, right-padded, with labels only on the completion."""
    ids = [p + c for p, c in zip(prompts, completions)]
    return {
        "input_ids": pad(ids, pad_id),
        "attention_mask": pad([[1] * len(s) for s in ids], 0),
        # Not named `labels`: the HF Trainer would then count label tokens and stop dividing by grad_accum.
        "completion_labels": pad([[IGNORE_INDEX] * len(p) + c for p, c in zip(prompts, completions)], IGNORE_INDEX),
    }


class _PromptRowsCollator:
    """Rows of prompt + completion for examples whose two row groups share their prompts (media once per prompt)."""

    def __init__(self, spec: TokenisationSpec, feature_caches: FeatureCaches | None = None) -> None:
        self.spec = spec
        self.feature_caches = feature_caches
        self.pad_id = spec.tokenizer.pad_token_id

    def rows(self, examples: list[Any], completions: list[list[int]]) -> dict[str, Any]:
        """`completions`: the first group's B rows then the second group's B rows, all after their example's prompt."""
        batch: dict[str, Any] = _rows([e.prompt_ids for e in examples] * 2, completions, self.pad_id)
        batch["ids"] = [e.where for e in examples]
        media = collate_media(self.spec, examples, self.feature_caches)
        if media:
            batch["media"] = media
        return batch


class PreferenceCollator(_PromptRowsCollator):
    """PreferenceExamples -> {input_ids, attention_mask, completion_labels: [2B, L] (rows [:B] chosen, [B:] rejected),
    media (once per pair), ids}."""

    def __call__(self, examples: list[PreferenceExample]) -> dict[str, Any]:
        return self.rows(examples, [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples])


class KTOCollator(_PromptRowsCollator):
    """KTOExamples -> {input_ids, attention_mask, completion_labels: [2B, L] (rows [:B] completions, [B:] KL rows),
    desirable [B] bool, media (once per sample), ids}."""

    def __call__(self, examples: list[KTOExample]) -> dict[str, Any]:
        batch = self.rows(examples, [e.completion_ids for e in examples] + [e.kl_completion_ids for e in examples])
        batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
        return batch
