"""Data without the model: a TokenisationSpec from a tokenizer and token counts tokenises and collates a dataset."""

from __future__ import annotations

import sys

import pytest
import torch

from mmadapt.config import DataConfig
from mmadapt.data.loading import load_data, load_preference
from mmadapt.data.tokenisation import IGNORE_INDEX, TokenisationSpec
from mmadapt.errors import ConfigError, DataError
from tests.data.format_helpers import make_model, make_tokenizer, png, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("tok")))


def pixels(path) -> torch.Tensor:
    """A stand-in for an encoder's preprocess: the mean colour of the image, one fixed-shape tensor per item."""
    from PIL import Image

    with Image.open(path) as image:
        return torch.tensor(image.convert("RGB").getpixel((0, 0)), dtype=torch.float32)


def test_a_spec_from_a_tokenizer_and_counts_collates_without_any_model(tokenizer, tmp_path):
    png(tmp_path / "a.png", (10, 20, 30))
    png(tmp_path / "b.png", (40, 50, 60))
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                             {"from": "gpt", "value": "The sky is blue."}]},
        {"image": "b.png", "conversations": [{"from": "human", "value": "Describe the image. <image>"},
                                             {"from": "gpt", "value": "The grass is green."}]},
    ])
    modules_before = set(sys.modules)
    spec = TokenisationSpec(tokenizer, media_tokens={"image": 5}, preprocess={"image": pixels})
    train_data, eval_data, collator, stats = load_data(spec, DataConfig(train=str(train), max_length=128))
    batch = collator(train_data)

    assert eval_data is None and stats["data_train_examples"] == 2.0
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [5, 5]  # each placeholder expanded to 5 positions
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all()  # never supervised
    assert batch["media"]["image"].tolist() == [[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]  # placeholder order
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    # tokenising and collating built no model: neither the model module nor any encoder was imported for it
    loaded = set(sys.modules) - modules_before
    assert not {m for m in loaded if m in ("mmadapt.model", "mmadapt.factory") or m.startswith("mmadapt.encoders")}


def test_preference_pairs_from_a_spec_alone(tokenizer, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "weather in Paris", "chosen": "sunny, 21 degrees",
                                                     "rejected": "The sky is blue."}])
    spec = TokenisationSpec(tokenizer)
    examples, _ = load_preference(str(pairs), spec, DataConfig(format="preference"), "d")
    assert examples[0].chosen_ids != examples[0].rejected_ids
    train, _, collator, _ = load_data(spec, DataConfig(format="preference", train=str(pairs)))
    assert collator(train)["input_ids"].shape[0] == 2  # chosen row, rejected row


def test_the_model_hands_out_the_spec_its_data_needs(tmp_path):
    model = make_model(make_tokenizer(tmp_path / "tok"))
    spec = model.tokenisation_spec()
    assert spec.tokenizer is model.tokenizer
    assert spec.media_tokens == {"image": model.num_media_tokens("image")}
    assert spec.placeholder_id("image") == model.placeholder_id("image")
    assert set(spec.preprocess) == set(spec.check) == {"image"}


def test_a_spec_refuses_what_it_cannot_tokenise(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="unknown modality 'smell'; valid: image, audio, video"):
        TokenisationSpec(tokenizer, media_tokens={"smell": 4})
    with pytest.raises(ConfigError, match=r"placeholders \['<pic>'\] are not tokens of the tokenizer"):
        TokenisationSpec(tokenizer, media_tokens={"image": 4}, placeholders={"image": "<pic>"})
    text_only = TokenisationSpec(tokenizer)
    record = write_jsonl(tmp_path / "t.jsonl", [{"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "blue"}]}])
    with pytest.raises(DataError, match="has image but the model has no image encoder"):
        load_data(text_only, DataConfig(train=str(record)))
