"""Offline tokenizers for tiny models: a word-level tokenizer trained on generated text, with a ChatML template."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mmadapt.data.templates import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def train_word_tokenizer(texts: Iterable[str], out_dir: str | Path | None = None, extra_tokens: Iterable[str] = ()):
    """A `PreTrainedTokenizerFast` whose vocabulary is every word and punctuation mark in `texts`.

    Word-level keeps tiny models' sequences short and makes every entity one token. Saved to
    `out_dir` (loadable with `AutoTokenizer.from_pretrained(out_dir)`) when given.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    specials = SPECIAL_TOKENS + [t for t in extra_tokens if t not in SPECIAL_TOKENS]
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tok.train_from_iterator(list(texts) + ["user assistant system"], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in specials if t not in ("<pad>", "<unk>", "<s>", "</s>")],
    )
    fast.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
