"""Reading mergekit YAML: keys map one to one, and what mmadapt cannot express is refused by name (exit 2)."""

from __future__ import annotations

import pytest
import yaml

from mmadapt.cli import main
from mmadapt.errors import ConfigError
from mmadapt.merge.merge import load_merge_config
from mmadapt.merge.mergekit_compat import from_mergekit


def test_keys_map_to_the_mmadapt_config(family):
    config = load_merge_config(from_mergekit({
        "merge_method": "ties", "base_model": str(family["base"]), "dtype": "bfloat16", "out_dtype": "float16",
        "models": [{"model": str(family["a"]), "parameters": {"weight": [0.1, 0.9], "density": 0.5}},
                   {"model": str(family["base"])}],
        "parameters": {"lambda": 0.7, "normalize": True, "int8_mask": True}, "tokenizer_source": "base"}))
    assert config.method == "ties" and config.base_model == str(family["base"])
    assert [m.model for m in config.models] == [str(family["a"])]  # the base's own entry is dropped
    assert config.models[0].parameters == {"weight": [0.1, 0.9], "density": 0.5}
    assert config.parameters == {"scaling": 0.7, "normalize": True}  # int8_mask changes memory, not results
    assert config.dtype == "float16"  # out_dtype decides the output


def test_slerp_takes_base_model_as_its_start(family):
    config = load_merge_config({"method": "slerp", "base_model": str(family["b"]),
                                "models": [{"model": str(family["a"])}], "parameters": {"t": 0.25}})
    assert [m.model for m in config.models] == [str(family["b"]), str(family["a"])] and config.base_model is None


@pytest.mark.parametrize("change, message", [
    ({"merge_method": "passthrough"}, "merge_method: 'passthrough' cannot be expressed by mmadapt; valid: linear"),
    ({"merge_method": "della"}, "merge_method: 'della' cannot be expressed"),
    ({"modules": {}}, "modules: per-module merges"),
    ({"tokenizer": {"source": "union"}}, "tokenizer: tokenizer surgery"),
    ({"chat_template": "chatml"}, "chat_template"),
    ({"tokenizer_source": "A"}, "tokenizer_source: 'A' cannot be expressed"),
    ({"dtype": "int8"}, "dtype: 'int8' is not valid"),
    ({"parameters": {"gamma": 0.01}}, "parameters.gamma: mmadapt cannot express this mergekit parameter"),
    ({"models": [{"model": "A+lora_dir"}]}, "model\\+lora syntax"),
    ({"slices": [{"sources": [{"model": "A", "layer_range": [0, 1]}]},
                 {"sources": [{"model": "A", "layer_range": [1, 2]}]}], "models": None}, "2 output slices"),
    ({"slices": [{"sources": [{"model": "A", "layer_range": [0, 1]}]}], "models": None},
     "layer_range: \\[0, 1\\] does not select every layer \\[0, 2\\]"),
    ({"foo": 1}, "foo: not a mergekit key"),
])
def test_what_cannot_be_expressed_is_refused_by_name(family, tmp_path, capsys, change, message):
    data = {"merge_method": "ties", "base_model": "BASE", "models": [{"model": "A", "parameters": {"weight": 1.0}}]}
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    text = yaml.safe_dump(data).replace("BASE", str(family["base"])).replace("A", str(family["a"]))
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("'A'", "'" + str(family["a"]) + "'")):
        load_merge_config(path)
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 2
    assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_slerp_with_two_models_and_a_base_for_parts_keeps_its_ends(family, caplog):
    """base_model needed by a task-vector part is not slerp's start: models[0] -> models[1], said in a warning."""
    data = {"method": "slerp", "base_model": str(family["base"]), "models": [{"model": str(family["a"])},
                                                                             {"model": str(family["b"])}],
            "parameters": {"t": 0.5}, "parts": [{"filter": "lm_head", "method": "task_arithmetic"}]}
    with caplog.at_level("WARNING"):
        config = load_merge_config(data)
    assert [m.model for m in config.models] == [str(family["a"]), str(family["b"])]
    assert config.base_model == str(family["base"])
    assert "interpolates models[0]" in caplog.text
    data.pop("parts")
    with pytest.raises(ConfigError, match="slerp interpolates from base_model"):
        load_merge_config(data)
