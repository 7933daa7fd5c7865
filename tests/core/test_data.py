"""Conversation data: clear errors naming file/line/sample/path, skipping and counting, truncation."""

import json

import pytest

from mmadapt.config import DataConfig
from mmadapt.data.conversations import ExampleBuilder
from mmadapt.data.records import read_records
from mmadapt.errors import DataError
from mmadapt.model import MultimodalLM


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) if not isinstance(r, str) else r for r in records) + "\n")
    return path


def conv(q="what colour is the shape ?", a="red", image=None):
    rec = {"conversations": [{"from": "human", "value": ("<image>\n" if image else "") + q}, {"from": "gpt", "value": a}]}
    if image:
        rec["image"] = image
    return rec


@pytest.fixture
def model(make_model_config):
    return MultimodalLM.from_config(make_model_config("llama"))


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [conv(), '{"conversations": [', conv()])
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        read_records(path)


def test_json_list_format(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([conv(), conv(a="blue")]))
    assert [w for w, _ in read_records(path)] == [f"{path}[0]", f"{path}[1]"]


def test_missing_image_names_sample_and_path(tmp_path, model, image_files):
    path = write_jsonl(tmp_path / "d.jsonl", [conv(image=str(image_files[0])), conv(image="nope.png")])
    builder = ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path)), path)
    with pytest.raises(DataError, match=r"d\.jsonl:2: image file not found: .*nope\.png"):
        builder.build(read_records(path))


def test_corrupt_image_is_an_error_or_skipped_and_counted(tmp_path, model, image_files):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    path = write_jsonl(tmp_path / "d.jsonl", [conv(image=str(image_files[0])), conv(image=str(bad))])
    with pytest.raises(DataError, match=r"d\.jsonl:2: corrupt or unreadable image .*bad\.png"):
        ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path)), path).build(read_records(path))
    builder = ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path), skip_bad_samples=True), path)
    examples = builder.build(read_records(path))
    assert len(examples) == 1 and builder.stats.counts["skipped_bad"] == 1


def test_placeholder_count_mismatch_names_sample(tmp_path, model, image_files):
    rec = conv(image=str(image_files[0]))
    rec["conversations"][0]["value"] = "<image> <image> two placeholders"
    path = write_jsonl(tmp_path / "d.jsonl", [rec])
    with pytest.raises(DataError, match=r"d\.jsonl:1: 2 <image> placeholder\(s\) in the text but 1 image"):
        ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path)), path).build(read_records(path))


def test_bad_role_and_missing_assistant(tmp_path, model):
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": [{"from": "robot", "value": "hi"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: conversations\[0\] has role 'robot'; valid: human, gpt"):
        ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path)), path).build(read_records(path))
    path = write_jsonl(tmp_path / "e.jsonl", [{"conversations": [{"from": "human", "value": "hi"}]}])
    with pytest.raises(DataError, match="no assistant"):
        ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path)), path).build(read_records(path))


def test_placeholders_expand_and_truncation_is_counted(tmp_path, model, image_files):
    long_answer = " ".join(["red"] * 40)
    path = write_jsonl(tmp_path / "d.jsonl", [conv(image=str(image_files[0])), conv(a=long_answer)])
    builder = ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path), max_length=24), path)
    examples = builder.build(read_records(path))
    m = model.num_media_tokens("image")
    assert examples[0].input_ids.count(model.placeholder_id("image")) == m
    assert len(examples[1].input_ids) == 24 and builder.stats.counts["truncated"] == 1
    # an image cut by max_length drops the sample (counted), never silently misaligns
    builder = ExampleBuilder(model.tokenisation_spec(), DataConfig(train=str(path), max_length=20), path)
    rec_path = write_jsonl(tmp_path / "f.jsonl", [conv(image=str(image_files[0])), conv()])
    rec = read_records(rec_path)
    rec[0][1]["conversations"][0]["value"] = "hello " * 30 + "<image>"
    builder.build(rec)
    assert builder.stats.counts["dropped_truncated_media"] == 1
