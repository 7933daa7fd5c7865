"""Config loading: strict keys and types, overrides, interpolation, stages."""

import pytest
import yaml

from mmadapt.config import RunConfig, TrainingConfig, from_dict, load, stage_configs
from mmadapt.run_config import load_run
from mmadapt.errors import ConfigError

BASE = {
    "model": {"llm": {"name_or_path": "some/model"}},
    "data": {"train": "train.jsonl"},
    "output_dir": "runs/x",
}


def test_unknown_key_names_path_valid_keys_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load(RunConfig, {**BASE, "training": {"lrr": 1e-3}})
    msg = str(e.value)
    assert "training.lrr" in msg and "did you mean 'lr'" in msg and "batch_size" in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"training\.batch_size: expected an integer"):
        load(RunConfig, {**BASE, "training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"training\.scheduler: 'cosin' is not valid"):
        load(RunConfig, {**BASE, "training": {"scheduler": "cosin"}})


def test_int_accepted_for_float_and_overrides_are_typed():
    cfg = load(RunConfig, BASE, ["training.lr=1e-4", "training.batch_size=4", "training.train_modules=[llm]"])
    assert cfg.training.lr == 1e-4 and cfg.training.batch_size == 4 and cfg.training.train_modules == ["llm"]
    assert from_dict(TrainingConfig, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="training.batch_size"):
        load(RunConfig, BASE, ["training.batch_size=abc"])


def test_validation_in_post_init_is_reported_with_the_section():
    with pytest.raises(ConfigError, match="exactly one of llm.name_or_path"):
        load(RunConfig, {**BASE, "model": {"llm": {}}})
    with pytest.raises(ConfigError, match="every encoder needs a connector"):
        load(RunConfig, {**BASE, "model": {"llm": {"name_or_path": "m"}, "encoders": {"image": {"name": "timm"}}}})


def test_interpolation_and_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {llm: {name_or_path: m}}\noutput_dir: out/a\ndata: {train: '${output_dir}/train.jsonl'}\n")
    cfg = load(RunConfig, path, ["output_dir=elsewhere"])
    assert cfg.data.train == "elsewhere/train.jsonl"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {llm: {name_or_path: m}}\ndata: {train: '${nope.key}'}\n")
    with pytest.raises(ConfigError, match=r"nope\.key"):
        load(RunConfig, bad)


def test_registry_parts_validated_at_load():
    raw = {**BASE, "model": {"llm": {"name_or_path": "m"}, "encoders": {"image": {"name": "timm", "layerr": -2}},
                             "connectors": {"image": {"name": "mlp"}}}}
    with pytest.raises(ConfigError, match=r"model\.encoders\.image\.layerr.*did you mean 'layer'"):
        load_run(raw)
    raw["model"]["encoders"]["image"] = {"name": "timmm"}
    with pytest.raises(ConfigError, match="unknown encoder 'timmm'.*did you mean 'timm'.*valid: "):
        load_run(raw)


def test_stages_expand_to_full_configs():
    raw = {**BASE, "training": {"lr": 1e-3}, "stages": [
        {"name": "align", "training": {"train_modules": ["connectors"]}},
        {"name": "tune", "training": {"train_modules": ["llm"], "lr": 5e-4}},
    ]}
    stages = stage_configs(load(RunConfig, raw))
    assert [n for n, _ in stages] == ["align", "tune"]
    assert stages[0][1].training.lr == 1e-3 and stages[1][1].training.lr == 5e-4
    assert stages[1][1].output_dir.endswith("x/tune")
    with pytest.raises(ConfigError, match=r"stages\[0\].*training.epochz"):
        stage_configs(load(RunConfig, {**BASE, "stages": [{"name": "a", "training": {"epochz": 1}}]}))


def test_optional_literal_lists_valid_values_and_set_indexes_lists():
    from dataclasses import dataclass, field
    from typing import Literal, Optional

    from mmadapt.config import apply_overrides

    @dataclass
    class Spec:
        dtype: Optional[Literal["float32", "bfloat16"]] = None
        models: list = field(default_factory=list)

    with pytest.raises(ConfigError, match=r"dtype: 'fp8' is not valid; valid: 'float32', 'bfloat16'"):
        from_dict(Spec, {"dtype": "fp8"})
    data = apply_overrides({"models": [{"model": "a"}, {"model": "b"}]}, ["models.1.model=c"])
    assert data["models"][1]["model"] == "c"
    with pytest.raises(ConfigError, match="index out of range"):
        apply_overrides(data, ["models.5.model=d"])


def test_threads_are_validated_and_scoped_to_the_run():
    import torch

    from mmadapt.train.run import torch_threads

    assert load(RunConfig, BASE, ["training.threads=1"]).training.threads == 1
    with pytest.raises(ConfigError, match="training.threads must be >= 1"):
        load(RunConfig, BASE, ["training.threads=0"])
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before


def test_overrides_never_mutate_the_callers_dicts():
    import copy

    from mmadapt.config import apply_overrides

    merge = {"method": "ties", "models": [{"model": "a"}]}
    merge_before = copy.deepcopy(merge)
    out = apply_overrides(merge, ["models.0.model=b", "parameters.density=0.5"])
    assert merge == merge_before and out["models"][0]["model"] == "b" and out["parameters"]["density"] == 0.5
    raw = {**BASE, "training": {"lr": 1e-3}}
    before = copy.deepcopy(raw)
    cfg = load_run(raw, ["training.lr=2e-4", "output_dir=runs/y"])
    assert raw == before and cfg.training.lr == 2e-4 and cfg.output_dir == "runs/y"
    assert load_run(raw).training.lr == 1e-3  # a second run from the same dict sees none of the first's overrides


def test_saved_run_config_round_trips(tmp_path):
    from mmadapt.config import dump, to_dict

    cfg = load_run({**BASE, "training": {"lr": 3e-4, "batch_size": 2},
                    "stages": [{"name": "a", "training": {"lr": 1e-4}}]})
    dump(cfg, tmp_path / "config.yaml")
    again = load_run(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


def _example_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [*sorted((root / "examples").glob("*.yaml")), *sorted((root / "examples" / "pipeline").glob("*.yaml")),
             *sorted((root / "mmadapt" / "quickstart" / "configs").glob("*.yaml"))]
    assert len(files) >= 16, files  # the glob must find the shipped examples, or this test checks nothing
    return files


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_example_config_loads(path):
    from mmadapt import registry
    from mmadapt.config import read_yaml
    from mmadapt.eval.config import SuiteConfig
    from mmadapt.merge.merge import MergeConfig
    from mmadapt.merge.mergekit_compat import translate
    from mmadapt.rag.store import RagConfig

    keys = set(read_yaml(path))
    if "method" in keys and "models" in keys:
        assert load(MergeConfig, translate(path)).models
    elif "tasks" in keys:
        assert load(SuiteConfig, path).tasks
    elif "embedder" in keys or "index" in keys:
        load(RagConfig, path)
    elif "requests" in keys:  # `mmadapt edit apply CONFIG`
        from mmadapt.editing.config import read_edit_config

        assert read_edit_config(path).requests.is_file()
    elif path.name.startswith("edit_"):
        method = registry.resolve("edit_method", path.stem.removeprefix("edit_"), where=str(path))
        from_dict(method.hparams_class, read_yaml(path))
    elif path.parent.name == "configs" and "model" not in keys:  # the dpo quickstart starts from the vlm one's model
        assert load_run(path, ["model.init_from=runs/sft"]).model.init_from == "runs/sft"
    else:
        assert load_run(path).output_dir


def test_typos_under_data_generate_and_retrieval_fail_at_load():
    with pytest.raises(ConfigError, match=r"data\.generate\.n_trian.*did you mean 'n_train'"):
        load_run({**BASE, "data": {"train": "t.jsonl", "generate": {"name": "shapes", "out": "d", "n_trian": 3}}})
    with pytest.raises(ConfigError, match=r"data\.retrieval\.kk.*did you mean 'k'"):
        load_run({**BASE, "data": {"train": "t.jsonl", "retrieval": {"index": "i", "kk": 3}}})
    with pytest.raises(ConfigError, match=r"data\.retrieval\.prompt\.instrution"):
        load_run({**BASE, "data": {"train": "t.jsonl", "retrieval": {"prompt": {"instrution": "x"}}}})
    with pytest.raises(ConfigError, match=r"stages\.b\.data\.retrieval\.mode: 'dence' is not valid.*dense"):
        load_run({**BASE, "stages": [{"name": "a"}, {"name": "b", "data": {"retrieval": {"mode": "dence"}}}]})
    cfg = load_run({**BASE, "data": {"train": "t.jsonl", "retrieval": {"index": "i", "k": 2},
                                     "generate": {"name": "shapes", "out": "d", "n_train": 3}}})
    assert cfg.data.retrieval["k"] == 2 and cfg.data.generate["n_train"] == 3


def test_merge_parameters_are_declared_once():
    from mmadapt.merge import mergekit_compat, params

    assert mergekit_compat.PARAMETERS == {"weight": "weight", "density": "density", "lambda": "scaling",
                                          "normalize": "normalize", "rescale": "rescale", "t": "t"}
    assert params.ParamResolver.DEFAULTS == {"weight": 1.0, "density": 1.0, "scaling": 1.0, "t": 0.5}
    assert set(params.BOOL_PARAMS) == {"normalize", "rescale"} and params.RANGES["density"] == (0.0, 1.0)
    with pytest.raises(ConfigError, match="density"):
        params.check_value("density", 1.5, "models[0].parameters.density")


@pytest.mark.parametrize("training, message", [
    ({"gradient_checkpointing": "false"}, "training.gradient_checkpointing: expected true or false, got str 'false'"),
    ({"batch_size": 1.5}, "training.batch_size: expected an integer, got float 1.5"),
    ({"batch_size": True}, "training.batch_size: expected an integer, got bool True"),
    ({"lr": float("inf")}, "training.lr: expected a finite number"),
    ({"lr": "0.001"}, "training.lr: expected a number, got str '0.001'"),
    ({"distributed": {"strategi": "fsdp"}}, r"unknown key 'training.distributed.strategi' \(did you mean 'strategy'\?\)"),
])
def test_pydantic_strict_types_name_the_path_and_what_was_given(training, message):
    with pytest.raises(ConfigError, match=message):
        load(RunConfig, {**BASE, "training": training})


def test_yaml_reads_1e_minus_4_as_a_number_in_files_and_overrides(tmp_path):
    from mmadapt.config import schema_model

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE) + "training: {lr: 1e-4}\n")
    assert load(RunConfig, path).training.lr == pytest.approx(1e-4)
    assert load(RunConfig, path, ["training.lr=3e-5"]).training.lr == pytest.approx(3e-5)
    assert load(RunConfig, path, ["training.epochs=2"]).training.epochs == 2.0  # an int stands for a float
    schema = schema_model(RunConfig).model_json_schema()  # the pydantic model behind the dataclass
    assert schema["additionalProperties"] is False and "training" in schema["properties"]
