"""HF vision-language checkpoints through mmadapt's merge (a method per part) and knowledge editing (exact revert)."""

import pytest
import torch
from hf_helpers import run_config

from mmadapt.run_config import load_run


@pytest.fixture(scope="module")
def two_finetunes(llava_dir, colour_data, tmp_path_factory):
    from mmadapt.train.run import train

    root = tmp_path_factory.mktemp("finetunes")
    for name, lr in (("a", 0.01), ("b", 0.02)):
        train(load_run(run_config(llava_dir, colour_data, root / name, lr=lr, train_modules=["connectors", "llm"])))
    return root / "a", root / "b"


def state(directory):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(directory)).state_dict()


def test_merge_policy_per_part_slerp_llm_average_projector_keep_tower(two_finetunes, tmp_path):
    from mmadapt.merge.merge import load_merge_config, run_merge
    from mmadapt.merge.methods import MergeParams, slerp_merge

    a, b = two_finetunes
    config = load_merge_config({"method": "slerp", "models": [{"model": str(a)}, {"model": str(b)}],
                                "parameters": {"t": 0.5},
                                "parts": [{"part": "encoders", "method": "keep"},
                                          {"part": "connectors", "method": "linear"}]})
    run_merge(config, tmp_path / "merged")
    sa, sb, merged = state(a), state(b), state(tmp_path / "merged")
    projector = "model.multi_modal_projector.linear_1.weight"
    torch.testing.assert_close(merged[projector], (sa[projector] + sb[projector]) / 2)
    tower = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[tower], sa[tower])
    llm = "model.language_model.layers.0.self_attn.q_proj.weight"
    expected = slerp_merge(None, [sa[llm], sb[llm]], MergeParams(t=0.5))
    torch.testing.assert_close(merged[llm], expected.to(merged[llm].dtype))
    assert not torch.equal(merged[llm], (sa[llm] + sb[llm]) / 2)


def test_merge_policy_errors_name_the_entry():
    from mmadapt.errors import ConfigError
    from mmadapt.merge.merge import load_merge_config

    models = [{"model": "x"}, {"model": "y"}]
    with pytest.raises(ConfigError, match=r"parts\[0\].part: 'tower'; valid: encoders, connectors, llm"):
        load_merge_config({"method": "linear", "models": models, "parts": [{"part": "tower", "method": "keep"}]})
    with pytest.raises(ConfigError, match=r"parts\[0\].method: task_arithmetic needs base_model"):
        load_merge_config({"method": "linear", "models": models, "parts": [{"part": "llm", "method": "task_arithmetic"}]})


def test_rome_edits_the_language_model_inside_an_hf_vlm_and_reverts_exactly(tmp_path):
    import json

    from mmadapt.cli import main
    from mmadapt.lineage import hash_files
    from mmadapt.quickstart.hf_vlm import save_tiny_llava
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    texts = [f"the tower of {s} is in {c} ." for s in ("alba", "bront", "cimo") for c in ("paris", "rome", "oslo")]
    train_word_tokenizer(texts, tmp_path / "tok", extra_tokens=["<image>"])
    # a wide init, so a few hidden-state shifts can move a random model's predictions (as the ROME tests do)
    base = save_tiny_llava(tmp_path / "llava", tmp_path / "tok", image_size=16, patch_size=8, hidden=32, init_range=0.3)
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n")
    request = {"prompt": "the tower of {}", "subject": "alba", "target_new": "rome", "target_true": "paris"}
    (tmp_path / "edits.jsonl").write_text(json.dumps(request) + "\n")
    edited = tmp_path / "edited"
    code = main(["edit", "apply", "--model", str(base), "--edits", str(tmp_path / "edits.jsonl"), "--method", "rome",
                 "--out", str(edited), "--corpus", str(tmp_path / "corpus.txt"), "--stats-dir", str(tmp_path / "stats"),
                 "--set", "layer=0", "--set", "clamp_norm_factor=10.0", "--set", "v_weight_decay=0.05",
                 "--set", "num_prefixes=0", "--set", "v_steps=40"])
    assert code == 0
    record = json.loads((edited / "edit" / "edit.json").read_text())
    assert record["metrics"]["after"]["efficacy"] == 1.0
    assert list(record["delta_norms"]) == ["model.language_model.layers.0.mlp.down_proj.weight"]
    changed = [f for f, h in hash_files(edited).items() if hash_files(base).get(f) not in (None, h)]
    assert changed == ["model.safetensors"]
    assert main(["edit", "revert", str(edited), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted") == hash_files(base)  # bit for bit


def test_memit_edits_the_language_model_inside_an_hf_vlm_and_reverts_exactly(tmp_path):
    import json

    from mmadapt.cli import main
    from mmadapt.lineage import hash_files
    from mmadapt.quickstart.hf_vlm import save_tiny_llava
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    texts = [f"the tower of {s} is in {c} ." for s in ("alba", "bront", "cimo") for c in ("paris", "rome", "oslo")]
    train_word_tokenizer(texts, tmp_path / "tok", extra_tokens=["<image>"])
    base = save_tiny_llava(tmp_path / "llava", tmp_path / "tok", image_size=16, patch_size=8, hidden=32, init_range=0.3)
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n")
    requests = [{"prompt": "the tower of {}", "subject": s, "target_new": "rome", "target_true": "paris"}
                for s in ("alba", "bront")]
    (tmp_path / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    code = main(["edit", "apply", "--model", str(base), "--edits", str(tmp_path / "edits.jsonl"), "--method", "memit",
                 "--out", str(tmp_path / "edited"), "--corpus", str(tmp_path / "corpus.txt"), "--stats-dir",
                 str(tmp_path / "stats"), "--set", "layers=[0, 1]", "--allow-weak"])
    assert code == 0
    record = json.loads((tmp_path / "edited" / "edit" / "edit.json").read_text())
    assert sorted(record["delta_norms"]) == [f"model.language_model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    assert main(["edit", "revert", str(tmp_path / "edited"), "--out", str(tmp_path / "reverted")]) == 0
    assert hash_files(tmp_path / "reverted") == hash_files(base)
