"""A plain peft adapter directory as `model.llm.name_or_path`: its base loads under it, and training continues it
(or, with a `peft:` section, merges it and trains a new one) instead of stacking a second LoRA that cannot be saved."""

import json

import pytest
import torch

from mmadapt.run_config import load_run


@pytest.fixture
def adapter_dir(tmp_path, tokenizer_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmadapt.quickstart.tiny import tiny_llm_config

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    spec = tiny_llm_config("llama", vocab_size=len(tokenizer), hidden=32, heads=2)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))  # the adapter records where its base is
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")  # adapter files only: the tokenizer is the base's
    return tmp_path / "adapter"


def text_run(tmp_path, adapter_dir, out, peft=None):
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                                 ["hello world", "the quick brown fox", "red green blue"] * 4))
    config = {"seed": 0, "output_dir": str(out), "model": {"llm": {"name_or_path": str(adapter_dir)}},
              "data": {"train": str(tmp_path / "text.jsonl"), "format": "text"},
              "training": {"max_steps": 2, "batch_size": 4, "lr": 0.01, "warmup_ratio": 0.0, "train_modules": ["llm"]}}
    if peft:
        config["peft"] = peft
    return load_run(config)


def test_an_adapter_directory_continues_training_and_saves(tmp_path, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mmadapt.model import MultimodalLM
    from mmadapt.train.run import train

    train(text_run(tmp_path, adapter_dir, tmp_path / "continued"))
    saved = json.loads((tmp_path / "continued" / "llm_adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 4  # the same adapter, trained further
    model = MultimodalLM.from_pretrained(tmp_path / "continued")
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")), str(adapter_dir))
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits)  # it trained


def test_an_adapter_directory_with_a_new_peft_section_merges_then_trains_a_new_adapter(tmp_path, adapter_dir):
    from mmadapt.train.run import train

    train(text_run(tmp_path, adapter_dir, tmp_path / "stacked", peft={"r": 2, "alpha": 4, "dropout": 0.0}))
    saved = json.loads((tmp_path / "stacked" / "llm_adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 2


def test_init_from_alone_continues_or_merges_a_finished_runs_adapters(tmp_path, adapter_dir):
    from mmadapt.train.run import train

    train(text_run(tmp_path, adapter_dir, tmp_path / "first"))
    follow = text_run(tmp_path, adapter_dir, tmp_path / "continued")
    raw = {"seed": 0, "output_dir": str(tmp_path / "continued"), "model": {"init_from": str(tmp_path / "first")},
           "data": {"train": str(tmp_path / "text.jsonl"), "format": "text"},
           "training": {"max_steps": 2, "batch_size": 4, "lr": 0.01, "warmup_ratio": 0.0, "train_modules": ["llm"]}}
    train(load_run(raw))
    assert json.loads((tmp_path / "continued" / "llm_adapter" / "adapter_config.json").read_text())["r"] == 4
    merged = {**raw, "output_dir": str(tmp_path / "merged"), "model": {"init_from": str(tmp_path / "first"),
                                                                         "merge_adapters": True}}
    train(load_run(merged))
    assert not (tmp_path / "merged" / "llm_adapter").exists()  # folded into merged/llm
    assert follow.model.llm is not None


def test_init_from_alone_refuses_a_second_model_description(tmp_path):
    from mmadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="init_from alone brings"):
        load_run({"model": {"init_from": str(tmp_path), "encoders": {"image": {"name": "timm"}},
                            "connectors": {"image": {"name": "mlp"}}}})
    with pytest.raises(ConfigError, match="model.init_from: .*not an mmadapt checkpoint"):
        from mmadapt.factory import build_model

        build_model(load_run({"model": {"init_from": str(tmp_path)}}).model)
