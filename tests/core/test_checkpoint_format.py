"""Recognising a model directory (factory.checkpoint_format) and the one NotAModelError every loader raises."""

from __future__ import annotations

import json

import pytest

from mmadapt.errors import ConfigError, DataError, NotAModelError
from mmadapt.factory import checkpoint_format
from mmadapt.peft_names import strip_peft_prefix, unwrap_base_layer, wrap_base_layer


def test_each_kind_is_recognised_by_its_files(tmp_path):
    cases = {"composed": ("mmadapt_model.yaml", "llm:\n  name_or_path: x\n", "mmadapt"),
             "saved_vlm": ("mmadapt_model.yaml", "vlm:\n  name_or_path: x\n", "mmadapt-vlm"),
             "adapter": ("adapter_config.json", "{}", "adapter"),
             "plain_vlm": ("config.json", json.dumps({"model_type": "llava"}), "hf-vlm"),
             "plain_lm": ("config.json", json.dumps({"model_type": "llama"}), "hf")}
    for name, (file, text, kind) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(text)
        assert checkpoint_format(tmp_path / name) == kind, name


def test_anything_else_is_one_error_type_naming_the_place(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAModelError, match=r"--model .*empty: not a model directory: .*mmadapt_model\.yaml"):
        checkpoint_format(tmp_path / "empty", f"--model {tmp_path / 'empty'}")
    with pytest.raises(NotAModelError, match="no such directory"):
        checkpoint_format(tmp_path / "missing")
    assert issubclass(NotAModelError, ConfigError) and issubclass(NotAModelError, DataError)  # old handlers still catch it
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mmadapt_model.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        checkpoint_format(tmp_path / "bad")


def test_loaders_raise_not_a_model_error(tmp_path):
    from mmadapt.editing.checkpoint import open_checkpoint
    from mmadapt.factory import load_model
    from mmadapt.merge.inputs import open_input

    for load in (load_model, open_checkpoint, lambda d: open_input(str(d), "models[0]")):
        with pytest.raises(NotAModelError, match="not a model directory"):
            load(tmp_path)


def test_peft_names_round_trip():
    assert unwrap_base_layer("model.layers.0.q_proj.base_layer.weight") == "model.layers.0.q_proj.weight"
    assert wrap_base_layer("model.layers.0.q_proj.weight", set()) == "model.layers.0.q_proj.base_layer.weight"
    assert wrap_base_layer("model.norm.weight", {"model.norm.weight"}) == "model.norm.weight"
    assert strip_peft_prefix("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
