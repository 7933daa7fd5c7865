"""The dpo quickstart: its pairs, and the whole recipe on a small untrained stand-in for the vlm SFT model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmadapt.quickstart.dpo import answer_kinds, preference_pairs

RECORDS = [
    ("f:1", {"id": "a", "image": "images/a.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the shape?"}, {"from": "gpt", "value": "red"}]}),
    ("f:2", {"id": "b", "image": "images/b.png", "conversations": [
        {"from": "human", "value": "<image>\ncount the shapes."}, {"from": "gpt", "value": "two"}]}),
]


def test_pairs_reject_wrong_answers_of_the_same_kind():
    every = preference_pairs(RECORDS, every_wrong=True)
    colours = next(k for k in answer_kinds() if "red" in k)
    assert sorted(p["rejected"] for p in every if p["id"] == "a") == sorted(c for c in colours if c != "red")
    assert sorted(p["rejected"] for p in every if p["id"] == "b") == ["one", "three"]
    one = preference_pairs(RECORDS, every_wrong=False, seed=3)
    assert [p["id"] for p in one] == ["a", "b"] and all(p["chosen"] != p["rejected"] for p in one)
    assert one == preference_pairs(RECORDS, every_wrong=False, seed=3)  # seeded
    assert every[0]["prompt"] == "<image>\nwhat colour is the shape?" and every[0]["image"] == "images/a.png"


def test_unknown_answer_is_a_config_error():
    from mmadapt.errors import ConfigError

    bad = [("f:9", {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                         {"from": "gpt", "value": "maybe"}]})]
    with pytest.raises(ConfigError, match="f:9: answer 'maybe'"):
        preference_pairs(bad, every_wrong=True)


def test_recipe_end_to_end_on_a_stand_in_sft_model(tmp_path, monkeypatch):
    """Plumbing only (an untrained model, 40 images): files, metrics, lineage. The targets need the real SFT model."""
    from mmadapt.config import ModelConfig, from_dict
    from mmadapt.lineage import read_manifest
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart import dpo
    from mmadapt.quickstart.media_qa import packaged_config
    from mmadapt.quickstart.shapes import generate

    vlm_dir = tmp_path / "quickstart-vlm"
    generate(vlm_dir / "data", seed=0, n_train=40, n_eval=10)
    spec = packaged_config("vlm")["model"]
    spec["llm"]["tokenizer"] = str(vlm_dir / "data" / "tokenizer")
    model = MultimodalLM.from_config(from_dict(ModelConfig, spec))
    model.save_pretrained(vlm_dir / dpo.SFT_STAGE, manifest={"kind": "training:stage2-instruct"})

    metrics = dpo.run(tmp_path / "quickstart-dpo")
    saved = json.loads((tmp_path / "quickstart-dpo" / "metrics.json").read_text())
    for key in ("preference_accuracy", "eval_accuracy", "eval_accuracy_sft", "eval_rewards_margin"):
        assert key in saved and isinstance(saved[key], float) and saved[key] == metrics[key]
    assert 0.0 <= metrics["preference_accuracy"] <= 1.0 and metrics["eval_pairs"] == 10.0
    pairs = (tmp_path / "quickstart-dpo" / "pairs" / "train.jsonl").read_text().splitlines()
    assert len(pairs) > 40  # every wrong answer of each training image
    assert (tmp_path / "quickstart-dpo" / "llm_adapter" / "adapter_config.json").is_file()
    manifest = read_manifest(tmp_path / "quickstart-dpo")
    assert any(p.get("kind") == "training:stage2-instruct" for p in manifest["parents"])


@pytest.mark.slow
def test_quickstart_meets_its_targets(tmp_path):
    """The real thing (trains the vlm quickstart first): preference_accuracy >= 0.95, eval_accuracy >= 0.9."""
    from mmadapt.quickstart import dpo

    metrics = dpo.run(Path(tmp_path) / "quickstart-dpo")
    assert metrics["preference_accuracy"] >= 0.95
    assert metrics["eval_accuracy"] >= 0.9
