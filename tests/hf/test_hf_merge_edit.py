"""HF vision-language checkpoints through mmadapt's merge (a method per part) and knowledge editing (exact revert)."""

import pytest
import torch
from hf_helpers import run_config

from mmadapt.config import load_run


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
    tower = "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"
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
