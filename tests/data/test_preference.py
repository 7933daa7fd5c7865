"""Preference pairs and KTO samples: tokenisation through the chat template, media once per pair, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmadapt.config import DataConfig
from mmadapt.data.loading import load_kto, load_preference
from mmadapt.data.preference import KTOCollator, PreferenceCollator
from mmadapt.data.templates import render
from mmadapt.errors import DataError
from mmadapt.model import MultimodalLM
from tests.tiny import build_model, model_spec, word_tokenizer

WORDS = "what is the capital of france paris lyon rome italy and answer colour sky blue red describe image"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return word_tokenizer(tmp_path_factory.mktemp("tok"), [WORDS])


def make_model(tokenizer_dir: Path, vision: bool = False) -> MultimodalLM:
    return build_model(model_spec(tokenizer_dir, image=vision))


@pytest.fixture(scope="module")
def model(tokenizer_dir):
    return make_model(tokenizer_dir)


def write(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def cfg(**kwargs) -> DataConfig:
    return DataConfig(format=kwargs.pop("format", "preference"), **kwargs)


GOOD = {"prompt": "what is the capital of france", "chosen": "paris", "rejected": "lyon"}


def test_pairs_share_the_prompt_and_supervise_only_completions(model, tmp_path):
    path = write(tmp_path / "p.jsonl", [GOOD, {"prompt": "what is the capital of italy", "chosen": "rome",
                                               "rejected": "paris and lyon"}])
    examples, stats = load_preference(path, model.tokenisation_spec(), cfg(), "data_train")
    assert stats == {"data_train_examples": 2.0}
    batch = PreferenceCollator(model.tokenisation_spec())(examples)
    assert batch["input_ids"].shape[0] == 4 and batch["ids"] == [f"{path}:1", f"{path}:2"]
    tok = model.tokenizer
    for row, (example, completion) in enumerate([(examples[0], "paris"), (examples[1], "rome"),
                                                  (examples[0], "lyon"), (examples[1], "paris and lyon")]):
        ids, labels, mask = batch["input_ids"][row], batch["completion_labels"][row], batch["attention_mask"][row]
        n_prompt = len(example.prompt_ids)
        assert ids[:n_prompt].tolist() == example.prompt_ids  # chosen and rejected rows share the prompt tokens
        supervised = labels[labels != -100].tolist()
        assert tok.decode(supervised) == f"{completion} <|im_end|>"  # the reply and the end-of-turn marker
        assert (labels[:n_prompt] == -100).all() and int(mask.sum()) == n_prompt + len(supervised)
    prompt_text = render(tok, [{"role": "user", "content": GOOD["prompt"]}], add_generation_prompt=True)
    assert examples[0].prompt_ids == tok(prompt_text, add_special_tokens=False)["input_ids"]


def test_multi_turn_prompt_and_conversational_completion(model, tmp_path):
    turns = [{"from": "human", "value": "what is the capital of france"}, {"from": "gpt", "value": "paris"},
             {"from": "human", "value": "and italy"}]
    path = write(tmp_path / "p.jsonl", [
        {"prompt": turns, "chosen": "rome", "rejected": "lyon"},
        {"prompt": turns, "chosen": [{"role": "assistant", "content": "rome"}], "rejected": "lyon"},
    ])
    examples, _ = load_preference(path, model.tokenisation_spec(), cfg(), "d")
    messages = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]} for t in turns]
    expected = model.tokenizer(render(model.tokenizer, messages, add_generation_prompt=True),
                               add_special_tokens=False)["input_ids"]
    assert examples[0].prompt_ids == expected
    assert examples[1].chosen_ids == examples[0].chosen_ids  # TRL's one-turn list form == the string form


def test_media_once_per_pair_with_expanded_placeholders(tokenizer_dir, tmp_path):
    from PIL import Image

    model = make_model(tokenizer_dir, vision=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / name)
    path = write(tmp_path / "mm.jsonl", [
        {"prompt": "<image>\ndescribe image", "image": "a.png", "chosen": "red", "rejected": "blue"},
        {"prompt": "<image>\ncolour", "image": "b.png", "chosen": "red", "rejected": "sky"},
    ])
    examples, _ = load_preference(path, model.tokenisation_spec(), cfg(), "d")
    n_tokens = model.num_media_tokens("image")
    assert examples[0].media == {"image": [tmp_path / "a.png"]}  # relative to the data file
    batch = PreferenceCollator(model.tokenisation_spec())(examples)
    assert batch["media"]["image"].shape == (2, 3, 32, 32)  # once per pair, not per row
    placeholders = (batch["input_ids"] == model.placeholder_id("image")).sum(dim=1)
    assert placeholders.tolist() == [n_tokens] * 4  # every row (chosen and rejected) carries its pair's positions


@pytest.mark.parametrize("record,message", [
    ({**GOOD, "rejected": "paris"}, "identical"),
    ({**GOOD, "chosen": "  "}, "'chosen' is empty"),
    ({"prompt": GOOD["prompt"], "chosen": "paris"}, "missing 'rejected'"),
    ({"chosen": "paris", "rejected": "lyon"}, "missing 'prompt'"),
    ({**GOOD, "chosen": 3}, "'chosen' must be a string"),
    ({**GOOD, "prompt": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "paris"}]}, "must end with a user"),
    ({**GOOD, "prompt": [{"speaker": "x"}]}, r"prompt\[0\]"),
    ({**GOOD, "image": "a.png"}, "has image but the model has no image encoder"),
    ({**GOOD, "chosen": "<image> paris"}, "media belong in the prompt"),
])
def test_bad_pairs_name_file_and_line(model, tmp_path, record, message):
    path = write(tmp_path / "bad.jsonl", [GOOD, record])
    with pytest.raises(DataError, match=message) as info:
        load_preference(path, model.tokenisation_spec(), cfg(), "d")
    assert f"{path}:2" in str(info.value)


def test_placeholder_count_must_match_media(tokenizer_dir, tmp_path):
    model = make_model(tokenizer_dir, vision=True)
    path = write(tmp_path / "mm.jsonl", [{**GOOD, "image": "a.png"}])
    with pytest.raises(DataError, match=rf"{path}:1: 0 <image> placeholder\(s\) in the prompt but 1 image"):
        load_preference(path, model.tokenisation_spec(), cfg(), "d")


def test_undecodable_image_is_reported_before_training(tokenizer_dir, tmp_path):
    model = make_model(tokenizer_dir, vision=True)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    path = write(tmp_path / "mm.jsonl", [{**GOOD, "prompt": "<image>\ndescribe image", "image": "broken.png"}])
    with pytest.raises(DataError, match=rf"{path}:1: .*broken.png"):
        load_preference(path, model.tokenisation_spec(), cfg(), "d")


def test_skip_bad_samples_counts_them(model, tmp_path):
    path = write(tmp_path / "p.jsonl", [GOOD, {**GOOD, "rejected": "paris"}, GOOD])
    examples, stats = load_preference(path, model.tokenisation_spec(), cfg(skip_bad_samples=True), "data_train")
    assert len(examples) == 2 and stats == {"data_train_examples": 2.0, "data_train_skipped_bad": 1.0}


def test_prompts_truncated_away_are_dropped_and_counted(model, tmp_path, caplog):
    long_prompt = " ".join(["what is the capital of france"] * 3)  # 18 words + template tokens
    path = write(tmp_path / "p.jsonl", [GOOD, {**GOOD, "prompt": long_prompt},
                                        {**GOOD, "chosen": "paris paris paris paris paris paris paris paris",
                                         "rejected": "paris paris paris paris paris paris paris paris lyon"}])
    caplog.set_level("WARNING")
    examples, stats = load_preference(path, model.tokenisation_spec(), cfg(max_length=16), "data_train")
    assert stats["data_train_dropped_prompt_too_long"] == 1.0
    assert stats["data_train_dropped_identical_after_truncation"] == 1.0  # only the extra "lyon" told them apart
    assert [e.where for e in examples] == [f"{path}:1"]
    assert f"{path}:2: dropped, the prompt" in caplog.text
    with pytest.raises(DataError, match="no usable examples"):
        load_preference(write(tmp_path / "q.jsonl", [{**GOOD, "prompt": long_prompt}]), model.tokenisation_spec(),
                        cfg(max_length=16), "d")


def test_kto_samples_and_mismatched_kl_rows(model, tmp_path):
    path = write(tmp_path / "k.jsonl", [
        {"prompt": "what is the capital of france", "completion": "paris", "label": True},
        {"prompt": "what is the capital of france", "completion": "lyon", "label": False},
        {"prompt": "what is the capital of italy", "completion": "rome", "label": True},
    ])
    examples, stats = load_kto(path, model.tokenisation_spec(), cfg(format="kto"), "data_train")
    assert stats == {"data_train_desirable": 2.0, "data_train_undesirable": 1.0, "data_train_examples": 3.0}
    # Each KL row takes the completion of the next sample with a *different* prompt.
    assert examples[0].kl_completion_ids == examples[2].completion_ids
    assert examples[1].kl_completion_ids == examples[2].completion_ids
    assert examples[2].kl_completion_ids == examples[0].completion_ids
    batch = KTOCollator(model.tokenisation_spec())(examples)
    assert batch["desirable"].tolist() == [True, False, True]
    assert batch["input_ids"].shape[0] == 6
    kl_row = batch["completion_labels"][3]
    assert model.tokenizer.decode(kl_row[kl_row != -100].tolist()) == "rome <|im_end|>"


@pytest.mark.parametrize("record,message", [
    ({"prompt": "what is the capital", "completion": "paris", "label": "yes"}, "'label' must be true"),
    ({"prompt": "what is the capital", "completion": "", "label": True}, "'completion' is empty"),
    ({"prompt": "what is the capital", "label": True}, "missing 'completion'"),
])
def test_bad_kto_samples(model, tmp_path, record, message):
    path = write(tmp_path / "k.jsonl", [record])
    with pytest.raises(DataError, match=message) as info:
        load_kto(path, model.tokenisation_spec(), cfg(format="kto"), "d")
    assert f"{path}:1" in str(info.value)


def test_load_data_picks_the_preference_reader_and_collator(model, tmp_path):
    from mmadapt.data.loading import load_data

    train = write(tmp_path / "train.jsonl", [GOOD])
    evaluation = write(tmp_path / "eval.jsonl", [GOOD, GOOD])
    train_data, eval_data, collator, stats = load_data(model.tokenisation_spec(), cfg(train=train, eval=evaluation))
    assert isinstance(collator, PreferenceCollator) and len(train_data) == 1 and len(eval_data) == 2
    assert stats == {"data_train_examples": 1.0, "data_eval_examples": 2.0}
    assert torch.equal(collator(train_data)["input_ids"][0, : len(train_data[0].prompt_ids)],
                       torch.tensor(train_data[0].prompt_ids))
