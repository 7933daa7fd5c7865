"""Sequence packing: per-sample losses equal the unpacked ones (1e-5), text and multimodal; rows never overflow."""

import json

import pytest
import torch

from mmadapt.config import DataConfig
from mmadapt.run_config import load_run
from mmadapt.data.packing import PackedCollator, first_fit


def per_token_nll(logits, labels):
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return nll, labels != -100


def test_first_fit_respects_capacity_and_keeps_every_sample():
    lengths = [7, 3, 9, 2, 5, 5, 1]
    rows = first_fit(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 33 tokens in rows of 10


@pytest.mark.parametrize("image", [False, True])
def test_packed_losses_equal_unpacked(make_model_config, image_files, tmp_path, image):
    from mmadapt.data.collator import ConversationCollator
    from mmadapt.data.conversations import ExampleBuilder
    from mmadapt.data.records import read_records
    from mmadapt.model import MultimodalLM

    model = MultimodalLM.from_config(make_model_config("llama", image=image)).eval()
    questions = ["what colour is the shape ?", "where is it ?", "how many shapes are there ?", "hello"]
    answers = ["red", "top left", "two", "the quick brown fox jumps over the lazy dog"]
    records = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        record = {"conversations": [{"from": "human", "value": ("<image>\n" if image else "") + q}, {"from": "gpt", "value": a}]}
        if image:
            record["image"] = image_files[i].name
        records.append(record)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    examples = ExampleBuilder(model.tokenisation_spec(), DataConfig(), tmp_path / "d.jsonl").build(read_records(str(tmp_path / "d.jsonl")))
    packed = PackedCollator(model.tokenisation_spec(), max_length=96)(examples)
    assert packed["input_ids"].shape[0] < len(examples)  # several samples share a row
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], media=packed.get("media"), position_ids=packed["position_ids"],
                       use_cache=False).logits
    nll, mask = per_token_nll(logits, packed["labels"])
    # per sample: position_ids restart at 0 where a sample starts; token t+1's loss belongs to its segment
    segment = (packed["position_ids"] == 0).long().cumsum(dim=1)[:, 1:]
    packed_losses = sorted(float(nll[r][mask[r] & (segment[r] == k)].sum())
                           for r in range(len(nll)) for k in segment[r][mask[r]].unique().tolist())
    single = []
    for example in examples:
        batch = ConversationCollator(model.tokenisation_spec())([example])
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=batch.get("media")).logits
        n, m = per_token_nll(out, batch["labels"])
        single.append(float(n[m].sum()))
    assert len(packed_losses) == len(examples)
    assert packed_losses == pytest.approx(sorted(single), abs=1e-5)  # each sample's summed NLL, 1e-5 absolute
    per_sample_tokens = sum(int((torch.tensor(e.labels[1:]) != -100).sum()) for e in examples)
    assert int(mask.sum()) == per_sample_tokens


def test_packing_trains_and_is_refused_where_it_does_not_apply(make_model_config, tmp_path):
    from mmadapt.config import to_dict
    from mmadapt.errors import ConfigError
    from mmadapt.train.run import train

    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                              ["hello world", "the quick brown fox jumps", "red green"] * 4))
    raw = {"output_dir": str(tmp_path / "out"), "model": to_dict(make_model_config("llama", image=False)),
           "data": {"train": str(tmp_path / "t.jsonl"), "format": "text", "packing": True, "max_length": 32},
           "training": {"max_steps": 2, "batch_size": 6, "train_modules": ["llm"], "logging_steps": 1}}
    metrics = train(load_run(raw))
    assert metrics["train_supervised_tokens"] > 0
    with pytest.raises(ConfigError, match="data.packing packs SFT samples"):
        load_run({**raw, "data": {**raw["data"], "format": "preference"}})
