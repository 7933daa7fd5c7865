"""What data builders and collators know of a model: its tokenizer, placeholders, media-token counts, processor.

A `TokenisationSpec` is all the data side needs, so a dataset can be tokenised and collated with no LLM
or encoder built: `TokenisationSpec(tokenizer, media_tokens={"image": 16}, preprocess={"image": fn})`.
A built model hands out its own with `model.tokenisation_spec()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from mmadapt.errors import ConfigError

IGNORE_INDEX = -100  # a label the loss skips (transformers' and torch's cross-entropy default)
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>", "video": "<video>"}  # modality -> default placeholder token


class EncodedMedia:
    """Items already encoded (a frozen encoder's cached features [n, N, D]): the model applies only the connector."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)


def with_placeholders(placeholders: Mapping[str, str], messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Messages whose media markers (<image>, ...) are written as the given placeholder tokens (modality -> token)."""
    renames = {PLACEHOLDERS[m]: t for m, t in placeholders.items() if t != PLACEHOLDERS[m]}
    if not renames:
        return messages
    out = []
    for message in messages:
        content = message["content"]
        for marker, token in renames.items():
            content = content.replace(marker, token)
        out.append({**message, "content": content})
    return out


@dataclass(frozen=True)
class TokenisationSpec:
    """How text and media become token ids for one model.

    - `tokenizer`: the LLM's tokenizer (placeholder tokens already in its vocabulary).
    - `media_tokens`: modality -> LLM positions one item occupies (its placeholder's expansion); its keys are the
      modalities the model takes.
    - `placeholders`: modality -> placeholder token; a modality left out uses `PLACEHOLDERS`.
    - `preprocess`: modality -> one raw item (a path) to a tensor of fixed shape (the encoder's `preprocess`).
    - `check`: modality -> a cheap decode check of one file, run when records are read (optional per modality).
    - `processor`: an HF vision-language model's processor, which renders, expands and preprocesses images itself
      (then `media_tokens` is empty).
    """

    tokenizer: Any
    media_tokens: Mapping[str, int] = field(default_factory=dict)
    placeholders: Mapping[str, str] = field(default_factory=dict)
    preprocess: Mapping[str, Callable[[Any], torch.Tensor]] = field(default_factory=dict)
    check: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)
    processor: Any = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.media_tokens) - set(PLACEHOLDERS))
        if unknown:
            raise ConfigError(f"media_tokens: unknown modality {unknown[0]!r}; valid: {', '.join(PLACEHOLDERS)}")
        # every modality the model takes has its placeholder token (frozen: set once, here)
        object.__setattr__(self, "placeholders", {m: self.placeholders.get(m, PLACEHOLDERS[m]) for m in self.media_tokens})
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in self.placeholders.values() if t not in vocab]
        if missing:
            raise ConfigError(f"placeholders {missing} are not tokens of the tokenizer; add them first "
                              "(tokenizer.add_special_tokens({'additional_special_tokens': [...]}))")

    @property
    def modalities(self) -> list[str]:
        return list(self.media_tokens)

    def placeholder_id(self, modality: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.placeholders[modality])

    def with_placeholders(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """`messages` with the default media markers written as this model's placeholder tokens."""
        return with_placeholders(self.placeholders, messages)
