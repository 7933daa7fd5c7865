"""The data formats users already have, each mapped onto the one internal conversation record: LLaVA, ShareGPT
(LLaMA-Factory), OpenAI messages, Alpaca, their preference versions, Hugging Face `datasets` files and folders, and a
dataset registry with weighted mixing. Loss masks are checked on built examples; bad records name file:line."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from format_helpers import make_model, make_tokenizer, png, supervised_texts, write_jsonl

from mmadapt.config import DataConfig
from mmadapt.data.formats import read_dataset
from mmadapt.data.loading import load_conversations, load_data, load_kto, load_preference

from mmadapt.errors import ConfigError, DataError

END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tok_dir):
    return make_model(tok_dir)


def cfg(tmp_path, **kwargs) -> DataConfig:
    return DataConfig(media_cache=str(tmp_path / "cache"), **kwargs)


def build(model, path, data_cfg):
    examples, _ = load_conversations(str(path) if not isinstance(path, list) else path, model.tokenisation_spec(),
                                     data_cfg, "data_train")
    return examples


def test_llava(model, tmp_path):
    png(tmp_path / "img" / "a.png")
    path = write_jsonl(tmp_path / "llava.jsonl", [
        {"id": "1", "image": "img/a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                                             {"from": "gpt", "value": "No acute findings."}]}])
    (example,) = build(model, path, cfg(tmp_path))
    assert supervised_texts(model.tokenizer, example) == ["No acute findings." + END]
    assert example.media["image"] == [tmp_path / "img" / "a.png"]


def test_media_of_a_data_file_named_relative_to_the_working_directory(model, tmp_path, monkeypatch):
    # `mmadapt quickstart` writes runs/quickstart-vlm/data/train.jsonl and names it relative to the cwd
    png(tmp_path / "runs" / "data" / "img" / "a.png")
    write_jsonl(tmp_path / "runs" / "data" / "llava.jsonl", [
        {"id": "1", "image": "img/a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                             {"from": "gpt", "value": "A square."}]}])
    monkeypatch.chdir(tmp_path)
    (example,) = build(model, "runs/data/llava.jsonl", cfg(tmp_path))
    assert example.media["image"] == [tmp_path / "runs" / "data" / "img" / "a.png"]


def test_sharegpt_system_tools_function_calls_and_images(model, tmp_path, caplog):
    png(tmp_path / "xr.png")
    tools = [{"name": "weather", "parameters": {"city": "string"}}]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{
        "system": "You are a radiologist.", "tools": json.dumps(tools), "images": ["xr.png"], "source": "web",
        "conversations": [{"from": "human", "value": "<image>weather in Paris"},
                          {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                          {"from": "observation", "value": "sunny, 21 degrees"},
                          {"from": "gpt", "value": "It is sunny."}]}])
    with caplog.at_level(logging.WARNING):
        (example,) = build(model, path, cfg(tmp_path))
    text = model.tokenizer.decode(example.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a radiologist.") and '"weather"' in text  # system + tools kept
    assert "<|im_start|>tool\nsunny, 21 degrees" in text
    assert supervised_texts(model.tokenizer, example) == [
        '{"name": "weather", "arguments": {"city": "Paris"}}' + END, "It is sunny." + END]
    assert caplog.text.count("'source'") == 1  # the unused field, named once


def test_openai_messages_with_parts(model, tmp_path):
    image = png(tmp_path / "p.png", (0, 0, 255))
    data_url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    wav = b"RIFF" + b"\x00" * 40
    path = write_jsonl(tmp_path / "openai.jsonl", [
        {"messages": [{"role": "system", "content": "You are a radiologist."},
                      {"role": "user", "content": [{"type": "text", "text": "Describe the image."},
                                                   {"type": "image_url", "image_url": {"url": data_url}}]},
                      {"role": "assistant", "content": "Clear lungs."}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                    "input_audio": {"data": base64.b64encode(wav).decode(),
                                                                    "format": "wav"}}]},
                      {"role": "assistant", "content": "sunny"}]}])
    first, second = (r for _, r in read_dataset(str(path), cfg(tmp_path), "conversation"))
    assert first["conversations"][1]["content"] == "Describe the image.\n<image>"
    (cached,) = first["image"]
    assert open(cached, "rb").read() == image.read_bytes() and str(tmp_path / "cache") in cached
    assert second["conversations"][0]["content"] == "<audio>" and open(second["audio"][0], "rb").read() == wav

    (example,) = build(model, write_jsonl(tmp_path / "one.jsonl", [json.loads(path.read_text().splitlines()[0])]),
                       cfg(tmp_path))
    assert supervised_texts(model.tokenizer, example) == ["Clear lungs." + END]


def test_alpaca_with_history_and_system(model, tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{
        "instruction": "and the grass?", "input": "", "output": "The grass is green.", "system": "You are a radiologist.",
        "history": [["what colour is the sky?", "The sky is blue."]]}])
    (example,) = build(model, path, cfg(tmp_path))
    assert supervised_texts(model.tokenizer, example) == ["The sky is blue." + END, "The grass is green." + END]
    assert "You are a radiologist." in model.tokenizer.decode(example.input_ids)


@pytest.mark.parametrize("record", [
    {"prompt": [{"role": "user", "content": "what colour is the sky?"}],  # TRL, explicit prompt
     "chosen": [{"role": "assistant", "content": "The sky is blue."}],
     "rejected": [{"role": "assistant", "content": "The grass is green."}]},
    {"chosen": [{"role": "user", "content": "what colour is the sky?"},  # TRL, implicit prompt
                {"role": "assistant", "content": "The sky is blue."}],
     "rejected": [{"role": "user", "content": "what colour is the sky?"},
                  {"role": "assistant", "content": "The grass is green."}]},
    {"conversations": [{"from": "human", "value": "what colour is the sky?"}],  # LLaMA-Factory ShareGPT ranking
     "chosen": {"from": "gpt", "value": "The sky is blue."}, "rejected": {"from": "gpt", "value": "The grass is green."}},
    {"instruction": "what colour is the sky?", "input": "",  # LLaMA-Factory Alpaca ranking
     "chosen": "The sky is blue.", "rejected": "The grass is green."},
], ids=["trl", "trl-implicit", "sharegpt", "alpaca"])
def test_preference_layouts(model, tmp_path, record):
    path = write_jsonl(tmp_path / "pairs.jsonl", [record])
    (pair,), _ = load_preference(str(path), model.tokenisation_spec(), cfg(tmp_path, format="preference"), "data_train")
    tok = model.tokenizer
    assert tok.decode(pair.prompt_ids).endswith("what colour is the sky?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(pair.chosen_ids) == "The sky is blue." + END
    assert tok.decode(pair.rejected_ids) == "The grass is green." + END


def test_kto_from_sharegpt_tag(model, tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"conversations": [{"from": "human", "value": "what colour is the sky?"}, {"from": "gpt", "value": "The sky is blue."}],
         "kto_tag": True},
        {"conversations": [{"from": "human", "value": "and the grass?"}, {"from": "gpt", "value": "The sky is blue."}],
         "kto_tag": False}])
    examples, _ = load_kto(str(path), model.tokenisation_spec(), cfg(tmp_path, format="kto", formatting="sharegpt"), "data_train")
    assert [e.desirable for e in examples] == [True, False]
    assert model.tokenizer.decode(examples[0].completion_ids) == "The sky is blue." + END


def test_hf_datasets_folder_parquet_and_arrow(model, tmp_path):
    import datasets

    image = png(tmp_path / "src.png", (10, 200, 10))
    ds = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": "<image>Describe the image."},
                      {"role": "assistant", "content": "Clear lungs."}]],
        "images": [[{"bytes": image.read_bytes(), "path": None}]],
    }).cast_column("images", datasets.Sequence(datasets.Image()))
    ds.to_parquet(str(tmp_path / "train.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for source in (tmp_path / "train.parquet", tmp_path / "saved", arrow):
        (example,) = build(model, source, cfg(tmp_path))
        assert supervised_texts(model.tokenizer, example) == ["Clear lungs." + END], source
        assert example.media["image"][0].read_bytes() == image.read_bytes()


def test_registry_file_with_column_mapping_and_weighted_mixing(model, tmp_path):
    png(tmp_path / "media" / "x.png")
    write_jsonl(tmp_path / "qa.jsonl", [{"q": f"what colour is the sky? {i}", "a": "The sky is blue."} for i in range(4)])
    write_jsonl(tmp_path / "xray.jsonl", [{"dialog": [{"role": "user", "content": "<image>Describe the image."},
                                                      {"role": "assistant", "content": "Clear lungs."}],
                                           "pics": ["x.png"]} for _ in range(2)])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "medqa_train": {"file_name": "qa.jsonl", "formatting": "alpaca", "columns": {"prompt": "q", "response": "a"}},
        "xray_train": {"file_name": "xray.jsonl", "formatting": "sharegpt", "media_dir": "media",
                       "columns": {"messages": "dialog", "images": "pics"},
                       "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                "assistant_tag": "assistant"}}}))
    data_cfg = cfg(tmp_path, train=["medqa_train", "xray_train"], dataset_info=str(tmp_path / "dataset_info.json"),
                   weights={"medqa_train": 0.5, "xray_train": 2.0})
    train, _, _, _ = load_data(model.tokenisation_spec(), data_cfg)
    images = [e for e in train if e.media]
    assert len(train) == 2 + 4 and len(images) == 4  # 0.5 x 4 question pairs, 2 x 2 x-ray conversations
    assert len({e.where for e in train}) == len(train)  # repeated records stay distinguishable
    assert all(supervised_texts(model.tokenizer, e) == ["Clear lungs." + END] for e in images)

    with pytest.raises(ConfigError, match="did you mean 'xray_train'"):
        read_dataset("xray_trian", data_cfg, "conversation")


def test_errors_name_the_file_and_line(model, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "system": "s"},
        {"conversations": [{"from": "robot", "value": "hi"}], "system": "s"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: conversations\[0\] has role 'robot'"):
        read_dataset(str(path), cfg(tmp_path), "conversation")
    with pytest.raises(DataError, match="cannot tell the layout"):
        read_dataset(str(write_jsonl(tmp_path / "odd.jsonl", [{"question": "q"}])), cfg(tmp_path), "conversation")
    (tmp_path / "broken.parquet").write_bytes(b"\xff\xfe not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read it with `datasets`"):
        read_dataset(str(tmp_path / "broken.parquet"), cfg(tmp_path), "conversation")
    with pytest.raises(DataError, match=r"unknown data file type '\.txt'"):
        read_dataset(str(write_jsonl(tmp_path / "d.txt", [{"text": "x"}])), cfg(tmp_path), "conversation")
    with pytest.raises(DataError, match="web URL"):
        read_dataset(str(write_jsonl(tmp_path / "w.jsonl", [{"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]},
            {"role": "assistant", "content": "ok"}]}])), cfg(tmp_path), "conversation")
