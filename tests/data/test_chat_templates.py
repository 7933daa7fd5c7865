"""Chat templates by name: every known template renders the system prompt and masks exactly the assistant replies
(+ their end-of-turn marker), including templates that rewrite history (Qwen3, Phi-3), found turn by turn."""

from __future__ import annotations

import logging

import pytest

from mmadapt.data.chat_templates import NAMED_TEMPLATES, resolve_chat_template
from mmadapt.data.templates import ensure_chat_template, render, tokenize_conversation
from mmadapt.errors import ConfigError

SYSTEM = "You answer in one line."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "what colour is the sky?"},
    {"role": "assistant", "content": "The sky is blue."},
    {"role": "user", "content": "and the grass?"},
    {"role": "assistant", "content": "The grass is green."},
]
END = {"chatml": "<|im_end|>", "qwen2": "<|im_end|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>",
       "llama3": "<|eot_id|>", "llama2": "</s>", "gemma": "<end_of_turn>", "mistral": "</s>", "phi3": "<|end|>",
       "zephyr": "</s>"}
MARKERS = sorted({m for _, markers in NAMED_TEMPLATES.values() for m in markers} | {"<s>", "</s>"})


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer (decoding gives back the exact text) with every template's markers as tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    texts = [m["content"] for m in CONVERSATION] * 4 + ["system user assistant model"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=MARKERS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def supervised_runs(tok, messages):
    ids, supervised = tokenize_conversation(tok, messages)
    runs, current = [], []
    for token, sup in zip(ids + [None], supervised + [False]):
        if sup:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_named_template_masks_exactly_the_replies(tokenizer, name):
    ensure_chat_template(tokenizer, name)
    text = render(tokenizer, CONVERSATION)
    assert SYSTEM in text  # never dropped, also where the family has no system role
    runs = supervised_runs(tokenizer, CONVERSATION)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        assert reply in run and END[name] in run[run.index(reply):]
        assert "sky?" not in run and "grass?" not in run and SYSTEM not in run
    assert sum(len(r) for r in runs) < len(text) / 2


def test_qwen3_history_without_think_is_found_turn_by_turn(tokenizer):
    ensure_chat_template(tokenizer, "qwen3")
    messages = [*CONVERSATION[:2], {"role": "assistant", "content": "<think>sky</think>The sky is blue."},
                *CONVERSATION[3:]]
    text = render(tokenizer, messages)
    assert text.count("<think>") == 1  # the first reply lost its reasoning in the history
    first, last = supervised_runs(tokenizer, messages)
    assert first == "The sky is blue.<|im_end|>"
    assert last == "<think>\n\n</think>\n\nThe grass is green.<|im_end|>"  # the newest turn as it is generated


def test_unknown_name_lists_the_valid_ones(tokenizer):
    with pytest.raises(ConfigError, match=r"'lama3' is not a known template \(did you mean 'llama3'\?\).*chatml"):
        resolve_chat_template("lama3")


def test_literal_jinja_file_and_tokenizer_directory(tokenizer, tmp_path):
    literal = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert resolve_chat_template(literal) == literal
    (tmp_path / "t.jinja").write_text(literal)
    assert resolve_chat_template(str(tmp_path / "t.jinja")) == literal
    tokenizer.chat_template = NAMED_TEMPLATES["gemma"][0]
    tokenizer.save_pretrained(tmp_path / "tok")
    assert resolve_chat_template(str(tmp_path / "tok")) == NAMED_TEMPLATES["gemma"][0]
    with pytest.raises(ConfigError, match="template file not found"):
        resolve_chat_template(str(tmp_path / "missing.jinja"))


def test_markers_the_tokenizer_lacks_are_a_warning(caplog):
    from transformers import AutoTokenizer

    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    tok = train_word_tokenizer(["what colour is the sky"])
    with caplog.at_level(logging.WARNING):
        ensure_chat_template(tok, "llama3")
    assert "<|eot_id|>" in caplog.text and "split into pieces" in caplog.text
    assert isinstance(AutoTokenizer, type)
