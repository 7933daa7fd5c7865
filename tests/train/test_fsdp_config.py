"""training.distributed: validation, the mapping onto TrainingArguments/accelerate's FSDP plugin, and the clear
refusals (fsdp on a CPU launch, fsdp with QLoRA on CPU, a bad DeepSpeed file) — all on CPU, no launch."""

import pytest

from mmadapt.run_config import load_run
from mmadapt.errors import ConfigError
from mmadapt.train.distributed import check_distributed, read_deepspeed_config, training_kwargs, wrap_classes
from tests.core.test_train import run_config


def cfg(tmp_path, **distributed):
    raw = run_config(tmp_path, max_steps=1, threads=1)
    raw["training"]["distributed"] = distributed
    return raw


def tiny_model(config):
    from mmadapt.data.loading import generate_data
    from mmadapt.factory import build_model

    generate_data(config.data)  # writes the tokenizer the model config names
    return build_model(config.model)


def test_fsdp_maps_onto_accelerate_fsdp2_plugin(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    config = load_run(cfg(tmp_path, strategy="fsdp", sharding="shard_grad_op", state_dict="full",
                          activation_checkpointing=True))
    kwargs = training_kwargs(config, tiny_model(config))
    assert kwargs["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]  # from _no_split_modules
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", **kwargs)
    plugin_args = args.fsdp_plugin_args
    assert plugin_args["fsdp_version"] == 2 and plugin_args["reshard_after_forward"] is False
    assert plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin_args["state_dict_type"] == "FULL_STATE_DICT" and plugin_args["activation_checkpointing"] is True
    plugin = FullyShardedDataParallelPlugin(**plugin_args)  # accelerate accepts every key
    assert plugin.fsdp_version == 2


def test_wrap_override_and_unknown_class(tmp_path):
    config = load_run(cfg(tmp_path, strategy="fsdp", wrap=["LlamaDecoderLayer"]))
    model = tiny_model(config)
    assert wrap_classes(model, config.training.distributed) == ["LlamaDecoderLayer"]
    assert training_kwargs(load_run(cfg(tmp_path, strategy="ddp")), model) == {}


def test_bad_combinations_name_the_key(tmp_path):
    with pytest.raises(Exception, match="training.distributed.deepspeed must name"):
        load_run(cfg(tmp_path, strategy="deepspeed"))
    with pytest.raises(Exception, match="strategy"):
        load_run(cfg(tmp_path, strategy="fsdp", deepspeed="x.json"))
    with pytest.raises(Exception, match="sharding"):
        load_run(cfg(tmp_path, strategy="fsdp", sharding="hybrid"))
    raw = cfg(tmp_path, strategy="deepspeed", deepspeed="examples/deepspeed/zero2.json")
    raw["peft"] = {"quantization": "4bit"}
    with pytest.raises(ConfigError, match="quantization=4bit"):
        check_distributed(load_run(raw))
    with pytest.raises(ConfigError, match="cpu_offload"):
        check_distributed(load_run(cfg(tmp_path, strategy="ddp", cpu_offload=True)))


def test_deepspeed_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        read_deepspeed_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError, match=r"bad.json:1:\d+: invalid JSON"):
        read_deepspeed_config(str(bad))
    bad.write_text('{"zero_optimization": {"stage": 5}}')
    with pytest.raises(ConfigError, match="zero_optimization.stage"):
        read_deepspeed_config(str(bad))


@pytest.mark.skipif(__import__("torch").accelerator.is_available(), reason="checks the CPU refusal")
def test_fsdp_on_a_cpu_launch_is_refused_not_silently_ddp(tmp_path):
    from mmadapt.train.run import train

    with pytest.raises(ConfigError, match="strategy=fsdp needs GPUs"):
        train(load_run(cfg(tmp_path, strategy="fsdp")))


@pytest.mark.parametrize("lora", [False, True])
def test_unsharded_model_takes_every_gathered_weight(tmp_path, lora):
    """Rank 0's final save after FSDP: a plain copy loaded with the gathered state (strict on every key)."""
    import torch

    from mmadapt.train.distributed import unsharded_model
    from mmadapt.train.peft import apply_peft

    raw = cfg(tmp_path, strategy="fsdp")
    if lora:
        raw["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    config = load_run(raw)
    source = tiny_model(config)
    if lora:
        apply_peft(source, config.peft, config.training.train_modules)
    gathered = {k: v + 0.25 for k, v in source.state_dict().items()}
    copy = unsharded_model(config, gathered)
    for key, value in copy.state_dict().items():
        torch.testing.assert_close(value, gathered[key], msg=key)
    gathered.pop(next(iter(gathered)))
    with pytest.raises(RuntimeError, match="missing"):
        unsharded_model(config, gathered)
