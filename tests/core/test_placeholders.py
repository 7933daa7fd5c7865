"""A composed model can name its own placeholder token; records keep <image>, tokenisation writes the model's token."""

import json

import torch

from mmadapt.config import DataConfig, ModelConfig, from_dict, to_dict


def test_a_config_names_another_image_token(make_model_config, image_files, tmp_path):
    from mmadapt.data.conversations import ExampleBuilder
    from mmadapt.data.records import read_records
    from mmadapt.generate import encode_prompt
    from mmadapt.model import MultimodalLM

    raw = to_dict(make_model_config("llama"))
    raw["placeholders"] = {"image": "<|img|>"}
    model = MultimodalLM.from_config(from_dict(ModelConfig, raw))
    token_id = model.tokenizer.convert_tokens_to_ids("<|img|>")
    assert model.placeholder_id("image") == token_id != model.tokenizer.unk_token_id
    record = {"image": image_files[0].name, "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the shape ?"}, {"from": "gpt", "value": "red"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    example = ExampleBuilder(model.tokenisation_spec(), DataConfig(), tmp_path / "train.jsonl").build(read_records(str(tmp_path / "train.jsonl")))[0]
    assert example.input_ids.count(token_id) == model.num_media_tokens("image")
    ids = encode_prompt(model, [{"role": "user", "content": "<image>\nwhat colour is the shape ?"}], {"image": [image_files[0]]})
    assert ids.count(token_id) == model.num_media_tokens("image")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids]),
                       media={"image": torch.stack([model.encoders["image"].preprocess(image_files[0])])}).logits
    assert torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "saved")
    reloaded = MultimodalLM.from_pretrained(tmp_path / "saved")
    assert reloaded.placeholders == {"image": "<|img|>"} and reloaded.placeholder_id("image") == token_id


def test_placeholders_are_checked():
    import pytest

    from mmadapt.run_config import load_run
    from mmadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="model.placeholders: unknown modality"):
        load_run({"model": {"llm": {"name_or_path": "x"}, "placeholders": {"picture": "<p>"}}})
