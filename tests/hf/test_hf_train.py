"""HF vision-language checkpoints through mmadapt's trainer: labels, which parts train, save back, LoRA, adapters in."""

import json

import pytest
import torch

from mmadapt.run_config import load_run
from mmadapt.errors import ConfigError
from hf_helpers import run_config


def weights(directory):
    from transformers import AutoModelForImageTextToText

    return {k: v.clone() for k, v in AutoModelForImageTextToText.from_pretrained(str(directory)).state_dict().items()}


def logits_on(model_or_hf, batch, wrapped: bool):
    with torch.no_grad():
        if wrapped:
            return model_or_hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               media=batch.get("media")).logits
        return model_or_hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           **batch.get("media", {})).logits


def a_batch(model, colour_data):
    from mmadapt.config import DataConfig
    from mmadapt.data.records import read_records
    from mmadapt.data.collator import ConversationCollator
    from mmadapt.hf.processing import ProcessedExampleBuilder

    builder = ProcessedExampleBuilder(model.processor, DataConfig(), colour_data / "train.jsonl")
    return ConversationCollator(model.tokenisation_spec())(builder.build(read_records(str(colour_data / "train.jsonl"))[:3]))


def test_labels_cover_assistant_replies_only(llava_dir, colour_data):
    from mmadapt.factory import load_model

    model = load_model(llava_dir)
    batch = a_batch(model, colour_data)
    row, labels = batch["input_ids"][0], batch["labels"][0]
    image_id = model.tokenizer.convert_tokens_to_ids("<image>")
    assert int((row == image_id).sum()) == 4  # 16x16 image, 8x8 patches, CLS dropped
    supervised = model.tokenizer.decode(labels[labels != -100])
    assert supervised.split() == ["red", "<|im_end|>", "top", "left", "<|im_end|>"]
    assert not bool((labels[row == image_id] != -100).any())


def test_connector_stage_trains_only_the_projector_and_saves_in_hf_format(llava_dir, colour_data, tmp_path):
    from mmadapt.train.run import train

    train(load_run(run_config(llava_dir, colour_data, tmp_path / "out", module_lr={"connectors": 0.05})))
    before, after = weights(llava_dir), weights(tmp_path / "out")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "processor_config.json").is_file()


def test_full_finetune_reloads_in_plain_transformers_with_equal_logits(llava_dir, colour_data, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mmadapt.factory import load_model
    from mmadapt.train.run import train

    train(load_run(run_config(llava_dir, colour_data, tmp_path / "out", train_modules=["encoders", "connectors", "llm"])))
    ours = load_model(tmp_path / "out")
    batch = a_batch(ours, colour_data)
    plain = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "out"))
    diff = (logits_on(ours, batch, True) - logits_on(plain, batch, False)).abs().max()
    assert diff <= 1e-5
    changed = {k.split(".")[0] for k, v in weights(tmp_path / "out").items() if not torch.equal(v, weights(llava_dir)[k])}
    assert {"model", "lm_head"} & changed


def test_lora_saves_a_standard_peft_adapter_and_exports_merged(llava_dir, colour_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmadapt.factory import load_model
    from mmadapt.hf.export import export_hf
    from mmadapt.train.run import train

    config = run_config(llava_dir, colour_data, tmp_path / "lora", train_modules=["connectors", "llm"])
    config["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    train(load_run(config))
    out = tmp_path / "lora"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["multi_modal_projector"]
    assert all("language_model" in t for t in adapter["target_modules"])  # no LoRA in the vision tower
    ours = load_model(out)
    batch = a_batch(ours, colour_data)
    plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(str(llava_dir)), str(out))
    assert (logits_on(ours, batch, True) - logits_on(plain, batch, False)).abs().max() <= 1e-5
    untouched = AutoModelForImageTextToText.from_pretrained(str(llava_dir))
    assert (logits_on(plain, batch, False) - logits_on(untouched, batch, False)).abs().max() > 1e-4

    exported = export_hf(out, tmp_path / "export")
    assert not (exported / "adapter_config.json").exists()
    merged = AutoModelForImageTextToText.from_pretrained(str(exported))
    assert (logits_on(merged, batch, False) - logits_on(ours, batch, True)).abs().max() <= 1e-5


def test_a_plain_peft_adapter_directory_starts_a_run(llava_dir, colour_data, tmp_path):
    from mmadapt.train.run import train

    first = run_config(llava_dir, colour_data, tmp_path / "first", train_modules=["llm"])
    first["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    train(load_run(first))
    (tmp_path / "first" / "mmadapt_model.yaml").unlink()  # as a peft adapter from elsewhere would arrive
    second = run_config(tmp_path / "first", colour_data, tmp_path / "second", train_modules=["llm"])
    second["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    train(load_run(second))
    assert (tmp_path / "second" / "adapter_config.json").is_file()
    continued = run_config(llava_dir, colour_data, tmp_path / "third", train_modules=["llm"])
    continued["model"]["vlm"]["adapter"] = str(tmp_path / "first")
    train(load_run(continued))  # the adapter keeps training (no second LoRA stacked on it)
    saved = json.loads((tmp_path / "third" / "adapter_config.json").read_text())
    assert saved["r"] == 4


def test_two_stages_chain_through_the_hf_layout(llava_dir, colour_data, tmp_path):
    from mmadapt.train.run import train

    config = run_config(llava_dir, colour_data, tmp_path / "run")
    config["stages"] = [{"name": "align", "training": {"train_modules": ["connectors"]}},
                        {"name": "tune", "training": {"train_modules": ["connectors", "llm"]}}]
    train(load_run(config))
    align, tune = weights(tmp_path / "run" / "align"), weights(tmp_path / "run" / "tune")
    projector = [k for k in align if "multi_modal_projector" in k]
    assert all(not torch.equal(align[k], weights(llava_dir)[k]) for k in projector)
    assert any(not torch.equal(align[k], tune[k]) for k in align if "language_model" in k)


def test_unsupported_architecture_and_missing_processor_are_named(tmp_path, llava_dir):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from mmadapt.config import ModelConfig, VLMConfig
    from mmadapt.hf.model import HFVisionLM

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="gpt2.*supported: llava"):
        HFVisionLM.from_config(ModelConfig(vlm=VLMConfig(name_or_path=str(tmp_path / "gpt2"))))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(llava_dir / f, bare / f)
    with pytest.raises(ConfigError, match="processor"):
        HFVisionLM.from_config(ModelConfig(vlm=VLMConfig(name_or_path=str(bare))))
    with pytest.raises(ConfigError, match="model.vlm brings its own"):
        load_run({"model": {"vlm": {"name_or_path": str(llava_dir)}, "encoders": {"image": {"name": "timm"}},
                            "connectors": {"image": {"name": "mlp"}}}})


@pytest.fixture(scope="module")
def preference_data(colour_data):
    records, kto = [], []
    for i, (good, bad) in enumerate([("red", "blue"), ("green", "red"), ("blue", "green")] * 2):
        prompt = "<image>\nwhat colour is the shape ?"
        records.append({"image": f"{i}.png", "prompt": prompt, "chosen": good, "rejected": bad})
        kto.append({"image": f"{i}.png", "prompt": prompt, "completion": good if i % 2 else bad, "label": bool(i % 2)})
    (colour_data / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (colour_data / "kto.jsonl").write_text("\n".join(json.dumps(r) for r in kto) + "\n")
    return colour_data


@pytest.mark.parametrize("objective", ["dpo", "ipo", "simpo", "orpo", "kto"])
def test_preference_objectives_train_an_hf_vlm(llava_dir, preference_data, tmp_path, objective):
    from mmadapt.train.run import train

    kto = objective == "kto"
    config = run_config(llava_dir, preference_data, tmp_path / "out", train_modules=["connectors", "llm"])
    config["data"] = {"train": str(preference_data / ("kto.jsonl" if kto else "pairs.jsonl")),
                      "format": "kto" if kto else "preference"}
    config["objective"] = {"name": objective}
    config["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    metrics = train(load_run(config))
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(llava_dir.resolve())


def test_preference_prompt_ids_are_the_processors(llava_dir, preference_data):
    from mmadapt.config import DataConfig
    from mmadapt.data.loading import load_preference
    from mmadapt.factory import load_model

    model = load_model(llava_dir)
    examples, _ = load_preference(str(preference_data / "pairs.jsonl"), model.tokenisation_spec(), DataConfig(format="preference"),
                                          "data_train")
    image_id = model.tokenizer.convert_tokens_to_ids("<image>")
    assert examples[0].prompt_ids.count(image_id) == 4
    assert model.tokenizer.decode(examples[0].chosen_ids).split() == ["red", "<|im_end|>"]


@pytest.mark.parametrize("lora", [False, True])
def test_killed_hf_vlm_run_resumes_to_the_same_weights(llava_dir, colour_data, tmp_path, lora):
    import multiprocessing as mp
    import signal

    from mmadapt.factory import load_model
    from mmadapt.train.run import train
    from tests.core.test_train import _killed_run

    def config(out):
        raw = run_config(llava_dir, colour_data, out, max_steps=6, save_steps=2, train_modules=["connectors", "llm"])
        if lora:
            raw["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        return raw

    train(load_run(config(tmp_path / "a")))
    proc = mp.get_context("fork").Process(target=_killed_run, args=(config(tmp_path / "b"), 3))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL
    train(load_run(config(tmp_path / "b")), resume=True)
    a = load_model(tmp_path / "a").hf.state_dict()
    b = load_model(tmp_path / "b").hf.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_the_example_config_is_valid():
    from pathlib import Path

    config = load_run(Path(__file__).resolve().parents[2] / "examples" / "hf_vlm_lora.yaml")
    assert config.model.vlm.name_or_path == "llava-hf/llava-1.5-7b-hf" and config.peft.r == 16


def test_a_tampered_hf_vlm_output_is_refused(llava_dir, colour_data, tmp_path):
    from mmadapt.errors import DataError
    from mmadapt.factory import load_model
    from mmadapt.train.run import train

    train(load_run(run_config(llava_dir, colour_data, tmp_path / "out")))
    load_model(tmp_path / "out")
    with open(tmp_path / "out" / "model.safetensors", "r+b") as f:  # same size, other bytes
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(DataError, match="SHA-256 differs"):
        load_model(tmp_path / "out")


def test_a_named_text_template_is_refused_for_a_vlm_and_jinja_is_used(llava_dir, colour_data):
    from mmadapt.config import DataConfig
    from mmadapt.data.records import read_records
    from mmadapt.errors import DataError
    from mmadapt.factory import load_model
    from mmadapt.hf.processing import ProcessedExampleBuilder
    from mmadapt.quickstart.hf_vlm import CHATML_VISION_TEMPLATE

    model = load_model(llava_dir)
    with pytest.raises(DataError, match="'llama3' is a text-only template"):
        ProcessedExampleBuilder(model.processor, DataConfig(chat_template="llama3"), colour_data / "train.jsonl")
    jinja = CHATML_VISION_TEMPLATE.replace("<|im_start|>", "<s>")
    builder = ProcessedExampleBuilder(model.processor, DataConfig(chat_template=jinja), colour_data / "train.jsonl")
    example = builder.build(read_records(str(colour_data / "train.jsonl"))[:1])[0]
    assert model.tokenizer.convert_tokens_to_ids("<s>") in example.input_ids
