"""Preference pairs and KTO samples for an HF vision-language model: prompts rendered and expanded by its processor.

The pair logic (checks, truncation, shared prompt tokens) is data/preference.py's; only rendering
(the processor's chat template, over content-part messages) and the prompt's image expansion differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmadapt.config import DataConfig
from mmadapt.data.conversations import RecordBuilder
from mmadapt.data.preference import PreferenceTokenizer, prompt_messages
from mmadapt.hf.processing import (add_special_tokens_for, load_image, process_images, record_images,
                                   to_hf_messages, use_chat_template)


class ProcessedPreferenceTokenizer(PreferenceTokenizer):
    """PreferenceTokenizer over an HF processor (its chat template, image token and image expansion)."""

    def __init__(self, processor: Any, data_cfg: DataConfig, data_file: str | Path) -> None:
        RecordBuilder.__init__(self, processor.tokenizer, data_cfg, data_file)  # not the spec's: the processor's
        self.spec = None  # the processor renders and expands images itself
        self.processor = processor
        use_chat_template(processor, data_cfg)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(to_hf_messages(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def prompt(self, where: str, record: dict[str, Any]) -> tuple[list[dict[str, str]], list[int], dict[str, list[Path]]]:
        messages = prompt_messages(record.get("prompt"), where)
        paths = record_images(record, messages, self.root, where)
        text = self.render(messages, add_generation_prompt=True)
        add_special = add_special_tokens_for(self.tokenizer, text)
        if paths:
            images = [load_image(p, where) for p in paths]
            ids = process_images(self.processor, [text], [images], add_special)["input_ids"][0].tolist()
        else:
            ids = list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])
        return messages, ids, {"image": paths} if paths else {}
