"""Shared builders for the HF vision-language tests: a tiny local LLaVA checkpoint and colour questions."""

import json

import pytest


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, tokenizer_dir):
    from mmadapt.quickstart.hf_vlm import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("llava"), tokenizer_dir, image_size=16, patch_size=8, hidden=32)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    records = []
    for i in range(12):
        name = list(colours)[i % 3]
        Image.new("RGB", (16, 16), colours[name]).save(root / f"{i}.png")
        records.append({"image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the shape ?"}, {"from": "gpt", "value": name},
            {"from": "human", "value": "where is it ?"}, {"from": "gpt", "value": "top left"}]})
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root
