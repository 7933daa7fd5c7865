"""mergekit YAML files run unchanged through `mmadapt merge` and give mergekit 0.1.5's tensors.

Both tools merge the same tiny Llamas (built here: a base and two perturbed "fine-tunes", three
layers so that gradients such as `t: [0, 0.5, 1]` take three values) from the same YAML file; every
output tensor must agree to float32 rounding. Skipped when mergekit is not installed (`pip install
mergekit==0.1.5`, the `mergekit` extra).
"""

from __future__ import annotations

import pytest
import torch
import yaml

pytest.importorskip("mergekit")

from merge_helpers import WORDS, perturbed, save_model, tiny_config  # noqa: E402

from mmadapt.cli import main  # noqa: E402
from mmadapt.merge.lazy import load_dir  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    root = tmp_path_factory.mktemp("mergekit_family")
    tokenizer = train_word_tokenizer([WORDS], out_dir=root / "tok")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), num_hidden_layers=3))
    dirs = {"base": save_model(base, root / "base", tokenizer, shard=None)}
    for i, name in enumerate("ab"):
        dirs[name] = save_model(perturbed(base, seed=i + 1, scale=0.05), root / name, tokenizer, shard=None,
                                parents=[dirs["base"]])
    return {k: str(v) for k, v in dirs.items()}


def _configs(m):
    return {
        "ties": {  # int(density * n) entries kept per tensor, per-layer weights, lambda
            "merge_method": "ties", "base_model": m["base"], "dtype": "float32", "tokenizer_source": "base",
            "models": [{"model": m["a"], "parameters": {"weight": [0.3, 1.0], "density": 0.3}},
                       {"model": m["b"], "parameters": {"weight": 0.7, "density": [0.2, 0.5, 0.9]}},
                       {"model": m["base"]}],
            "parameters": {"lambda": 0.9, "int8_mask": True}},
        "ties_unnormalized_union": {
            "merge_method": "ties", "base_model": m["base"], "tokenizer_source": "union",
            "models": [{"model": m["a"], "parameters": {"weight": 1.0, "density": 0.45}},
                       {"model": m["b"], "parameters": {"weight": 0.5, "density": 0.45}}],
            "parameters": {"normalize": False}},
        "task_arithmetic_filters": {
            "merge_method": "task_arithmetic", "base_model": m["base"],
            "models": [{"model": m["a"], "parameters": {"weight": [{"filter": "self_attn", "value": [0.0, 1.0]},
                                                                   {"filter": "mlp", "value": 0.4}, {"value": 0.8}]}},
                       {"model": m["b"], "parameters": {"weight": 0.5}}]},
        "dare_ties_defaults": {  # density 1: no random drops, so the defaults (no normalisation) decide
            "merge_method": "dare_ties", "base_model": m["base"],
            "models": [{"model": m["a"], "parameters": {"weight": 0.6, "density": 1.0}},
                       {"model": m["b"], "parameters": {"weight": 0.9, "density": 1.0}}]},
        "linear_gradient": {
            "merge_method": "linear", "dtype": "float32",
            "models": [{"model": m["a"], "parameters": {"weight": [1.0, 0.2]}},
                       {"model": m["b"], "parameters": {"weight": 0.5}}]},
        "slerp_base_is_t0": {  # base_model listed second: it is still the t = 0 end
            "merge_method": "slerp", "base_model": m["b"],
            "models": [{"model": m["a"]}, {"model": m["b"]}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"filter": "mlp", "value": [1, 0.5, 0]},
                                 {"value": 0.3}]}},
        "slices_whole_layers": {
            "merge_method": "ties", "base_model": m["base"], "out_dtype": "float32",
            "slices": [{"sources": [{"model": m["base"], "layer_range": [0, 3]},
                                    {"model": m["a"], "layer_range": [0, 3], "parameters": {"weight": 1.0, "density": 0.6}},
                                    {"model": m["b"], "layer_range": [0, 3],
                                     "parameters": {"weight": [0.2, 1.0], "density": 0.6}}],
                        "parameters": {"lambda": 1.1}}]},
    }


CASES = list(_configs({"base": "", "a": "", "b": ""}))


@pytest.mark.parametrize("case", CASES)
def test_mergekit_yaml_runs_unchanged_and_equals_mergekit(case, models, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = _configs(models)[case]
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(path.read_text())), str(tmp_path / "mergekit"),
              MergeOptions(quiet=True, write_model_card=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "mmadapt")]) == 0
    theirs, ours = load_dir(tmp_path / "mergekit"), load_dir(tmp_path / "mmadapt")
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m: f"{case} {name}: {m}")
    reference = load_dir(models["base"])
    changed = [n for n in reference if not torch.equal(ours[n], reference[n])]
    assert len(changed) == len(reference), "every tensor is a real merge, not a copy of the base"


def test_ties_keeps_floor_density_n_entries_where_rounding_would_differ(models, tmp_path):
    """density * n = x.5 or above rounds up but mergekit floors: n = 32 * 32, density 0.3 -> 307.2 -> 307 kept."""
    from mmadapt.merge.methods import magnitude_mask

    delta = torch.randn(32, 32)
    assert int(magnitude_mask(delta, 0.3).sum()) == 307
    assert int(magnitude_mask(delta, 0.2998).sum()) == 306  # round() would keep 307
    assert int(magnitude_mask(torch.randn(3), 0.1).sum()) == 1  # at least one entry while density > 0
