"""The contract per family: our records through our builder, collator and wrapper give the HF class's own logits
(its processor's chat template and expansion, its forward) for text only, one image, two images, multi-turn."""

import json

import pytest
import torch
from PIL import Image

FAMILIES = ["llava", "llava_next", "qwen2_5_vl", "idefics3"]
CASES = {
    "text": ([("user", "describe the shape ."), ("assistant", "a red circle .")], 0),
    "one_image": ([("user", "<image>\nwhat colour is the shape ?"), ("assistant", "red")], 1),
    "two_images": ([("user", "<image><image>\ncompare the two images ."), ("assistant", "one red , one blue .")], 2),
    "multi_turn": ([("user", "<image>\nwhat colour is the shape ?"), ("assistant", "red"),
                    ("user", "where is it ?"), ("assistant", "top left")], 1),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> a tiny random checkpoint saved with save_pretrained (built on first use)."""
    from mmadapt.hf.tiny import save_tiny_vlm

    root = tmp_path_factory.mktemp("families")
    built: dict = {}

    def get(family):
        if family not in built:
            built[family] = save_tiny_vlm(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, (colour, size) in enumerate([((255, 0, 0), (32, 32)), ((0, 0, 255), (48, 32))]):  # two aspect ratios
        image = Image.new("RGB", size, (0, 0, 0))
        image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (0, 0))
        image.save(root / f"{i}.png")
        paths.append(root / f"{i}.png")
    return paths


def hf_messages(turns, images):
    """The same conversation as HF writes it: content parts with the images themselves."""
    remaining = list(images)
    messages = []
    for role, text in turns:
        parts = []
        for i, piece in enumerate(text.split("<image>")):
            if i:
                parts.append({"type": "image", "image": Image.open(remaining.pop(0)).convert("RGB")})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    return messages


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_the_hf_class_forward(checkpoints, images, tmp_path, family, case):
    from transformers import AutoModelForImageTextToText

    from mmadapt.config import DataConfig
    from mmadapt.data.collator import ConversationCollator
    from mmadapt.data.records import read_records
    from mmadapt.factory import load_model
    from mmadapt.hf.processing import ProcessedExampleBuilder

    turns, n_images = CASES[case]
    used = images[:n_images]
    record = {"conversations": [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in turns]}
    if used:
        record["image"] = [str(p) for p in used]
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    model = load_model(checkpoints(family)).eval()
    builder = ProcessedExampleBuilder(model.processor, DataConfig(max_length=4096), tmp_path / "data.jsonl")
    batch = ConversationCollator(model.tokenisation_spec())(builder.build(read_records(str(tmp_path / "data.jsonl"))))

    hf = AutoModelForImageTextToText.from_pretrained(str(checkpoints(family))).eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(checkpoints(family)))
    reference = processor.apply_chat_template(hf_messages(turns, used), tokenize=True, return_dict=True,
                                              return_tensors="pt")
    assert batch["input_ids"][0].tolist() == reference["input_ids"][0].tolist()
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=batch.get("media")).logits
        theirs = hf(**reference).logits
    assert (ours - theirs).abs().max() <= 1e-5
    supervised = batch["labels"][0] != -100
    assert supervised.any() and not bool(supervised[: batch["input_ids"].shape[1] // 3].all())


@pytest.fixture(scope="module")
def family_data(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("family_data")
    sft, pairs = [], []
    for i in range(4):
        image = str(images[i % 2])
        sft.append({"image": image, "conversations": [{"from": "human", "value": "<image>\nwhat colour is the shape ?"},
                                                      {"from": "gpt", "value": ["red", "blue"][i % 2]}]})
        pairs.append({"image": image, "prompt": "<image>\nwhat colour is the shape ?",
                      "chosen": ["red", "blue"][i % 2], "rejected": ["blue", "red"][i % 2]})
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return root


def _run(checkpoint, data_dir, out, **extra):
    from mmadapt.run_config import load_run
    from mmadapt.train.run import train

    config = {"seed": 0, "output_dir": str(out), "model": {"vlm": {"name_or_path": str(checkpoint)}},
              "data": {"train": str(data_dir / "sft.jsonl")},
              "training": {"max_steps": 1, "batch_size": 2, "lr": 0.01, "warmup_ratio": 0.0, "logging_steps": 1,
                           "train_modules": ["connectors"]}}
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    train(load_run(config))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_train_save_lora_dpo_and_edit_each_family(checkpoints, family_data, tmp_path, family):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmadapt.cli import main
    from mmadapt.factory import load_model
    from mmadapt.hf.families import FAMILIES as PARTS
    from mmadapt.lineage import hash_files

    base = checkpoints(family)
    parts = PARTS[json.loads((base / "config.json").read_text())["model_type"]]
    # a projector-only step changes the projector only, and the output reloads in plain transformers
    full = _run(base, family_data, tmp_path / "full")
    before = AutoModelForImageTextToText.from_pretrained(str(base)).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(str(full)).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(parts.part_of(k) == "connectors" for k in changed), sorted(changed)[:5]
    # DPO with LoRA on the language model: a standard peft adapter for the HF class
    lora = _run(base, family_data, tmp_path / "lora", data={"train": str(family_data / "pairs.jsonl"), "format": "preference"},
                objective={"name": "dpo"}, peft={"r": 4, "alpha": 8, "dropout": 0.0},
                training={"train_modules": ["connectors", "llm"]})
    ours = load_model(lora).eval()
    plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(str(base)), str(lora)).eval()
    ids = torch.tensor([ours.tokenizer("what colour is the shape ?")["input_ids"]])
    with torch.no_grad():
        assert (ours(input_ids=ids).logits - plain(input_ids=ids).logits).abs().max() <= 1e-5
    # a merge with a method per part: the projector averaged, the tower kept; transformers loads the result
    from mmadapt.merge.merge import load_merge_config, run_merge

    run_merge(load_merge_config({"method": "linear", "models": [{"model": str(full)}, {"model": str(base)}],
                                 "parts": [{"part": "encoders", "method": "keep"}]}), tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "merged")).state_dict()
    for key in changed:  # projector tensors: the mean of the two models
        torch.testing.assert_close(merged[key], (before[key] + after[key]) / 2)
    # ROME on the language model inside the VLM, reverted bit for bit
    (tmp_path / "edits.jsonl").write_text(json.dumps({"prompt": "the shape is {}", "subject": "red",
                                                       "target_new": "blue", "target_true": "green"}) + "\n")
    (tmp_path / "corpus.txt").write_text("the shape is red .\nthe shape is blue .\nwhat colour is the shape ?\n")
    assert main(["edit", "apply", "--model", str(full), "--edits", str(tmp_path / "edits.jsonl"), "--out",
                 str(tmp_path / "edited"), "--corpus", str(tmp_path / "corpus.txt"), "--stats-dir",
                 str(tmp_path / "stats"), "--set", "layer=0", "--set", "num_prefixes=0", "--allow-weak"]) == 0
    record = json.loads((tmp_path / "edited" / "edit" / "edit.json").read_text())
    assert all(parts.part_of(name) == "llm" for name in record["delta_norms"])
    assert main(["edit", "revert", str(tmp_path / "edited"), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted") == hash_files(full)
