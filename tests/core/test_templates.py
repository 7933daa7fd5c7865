"""Loss only on assistant turns: decoding the supervised tokens gives back exactly the assistant messages."""

import pytest
from transformers import AutoTokenizer

from mmadapt.data.templates import CHATML_TEMPLATE, tokenize_conversation

LLAMA3_TEMPLATE = (
    "{{ '<s>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<s>[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' </s>' }}{% endif %}{% endfor %}"
)
END_MARKERS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": "</s>"}

CONVERSATION = [
    {"role": "user", "content": "what colour is the shape ?"},
    {"role": "assistant", "content": "the shape is red ."},
    {"role": "user", "content": "how many shapes are there ?"},
    {"role": "assistant", "content": "there are three ."},
]


@pytest.fixture
def templated_tokenizer(tokenizer_dir):
    def make(style: str):
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                                             "[INST]", "[/INST]"]}, replace_extra_special_tokens=False)
        tok.chat_template = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "llama2": LLAMA2_TEMPLATE}[style]
        return tok

    return make


@pytest.mark.parametrize("style", ["chatml", "llama3", "llama2"])
def test_supervised_tokens_are_the_assistant_turns(templated_tokenizer, style):
    tok = templated_tokenizer(style)
    ids, supervised = tokenize_conversation(tok, CONVERSATION)
    # contiguous supervised runs, decoded, are each assistant message followed by the end-of-turn marker
    runs, current = [], []
    for token, sup in zip(ids, supervised):
        if sup:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    decoded = [tok.decode(r).strip() for r in runs]
    expected = [f"{m['content']} {END_MARKERS[style]}" for m in CONVERSATION if m["role"] == "assistant"]
    assert [d.replace(" ", "") for d in decoded] == [e.replace(" ", "") for e in expected]
    # nothing of the user turns or role headers is supervised
    assert "user" not in tok.decode([t for t, s in zip(ids, supervised) if s])
