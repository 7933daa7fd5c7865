"""The shipped DeepSpeed JSONs (examples/deepspeed) and accelerate configs (examples/accelerate): parsed by
transformers' DeepSpeed config (every "auto" filled from TrainingArguments) and accelerate's config loader,
naming only keys `accelerate launch` knows. They run only on GPUs; this checks what they say, on CPU."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from mmadapt.train.distributed import read_deepspeed_config

ROOT = Path(__file__).resolve().parents[2]
DS = sorted((ROOT / "examples" / "deepspeed").glob("*.json"))
ACC = sorted((ROOT / "examples" / "accelerate").glob("*.yaml"))


def test_examples_exist():
    assert {p.name for p in DS} >= {"zero2.json", "zero3.json", "zero3_offload.json"}
    assert {p.name for p in ACC} >= {"fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "multi_node.yaml"}


@pytest.mark.parametrize("path", DS, ids=lambda p: p.name)
def test_deepspeed_json_names_its_stage(path):
    stage = read_deepspeed_config(str(path))["zero_optimization"]["stage"]
    assert stage == int(path.stem[4])  # zero2 -> 2, zero3* -> 3


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="transformers' DeepSpeed config needs the deepspeed package (pip install 'mmadapt[deepspeed]')")
@pytest.mark.parametrize("path", DS, ids=lambda p: p.name)
def test_deepspeed_json_parses_and_every_auto_is_filled(path, tmp_path):
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    stage = read_deepspeed_config(str(path))["zero_optimization"]["stage"]
    try:  # the config registers itself process-wide (transformers' is_deepspeed_zero3_enabled reads it)
        ds = HfTrainerDeepSpeedConfig(str(path))
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=2,
                                 gradient_accumulation_steps=4)
        ds.trainer_config_process(args)
        ds.trainer_config_finalize(args, model=None, num_training_steps=10)
        assert ds.config["train_micro_batch_size_per_gpu"] == 2 and ds.config["gradient_accumulation_steps"] == 4
        assert "auto" not in yaml.safe_dump(ds.config)
        assert ds.is_zero3() == (stage == 3)
        if "offload" in path.stem:
            assert ds.is_offload()
    finally:
        unset_hf_deepspeed_config()


@pytest.mark.parametrize("path", ACC, ids=lambda p: p.name)
def test_accelerate_yaml_loads_with_known_keys_only(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))  # refuses unknown top-level keys
    assert isinstance(config, ClusterConfig)
    known = {action.dest for action in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text())
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = set(raw.get(section, {})) - known
        assert not unknown, f"{path.name}: {section} keys accelerate launch does not know: {unknown}"
    ds_file = raw.get("deepspeed_config", {}).get("deepspeed_config_file")
    if ds_file:
        assert (ROOT / ds_file).is_file(), ds_file
