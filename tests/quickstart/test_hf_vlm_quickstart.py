"""`mmadapt quickstart hf-vlm`: the road on shrunken data (fast), and (slow) the issue's targets through the real CLI."""

import json
import os
import subprocess
import sys

import pytest

from mmadapt.quickstart.hf_vlm import run_hf_vlm


def test_shrunken_road_exports_a_model_transformers_reloads_identically(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmadapt.lineage import read_manifest

    metrics = run_hf_vlm(tmp_path, n_train=32, n_eval=8,
                         overrides=["training.batch_size=8", "stages.1.training.epochs=1"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["reload_eval_accuracy"] == metrics["eval_accuracy"]
    assert metrics["export_max_logit_diff"] <= 1e-4
    export = tmp_path / "export"
    assert type(AutoModelForImageTextToText.from_pretrained(str(export))).__name__ == "LlavaForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(str(export))).__name__ == "LlavaProcessor"
    assert not (export / "mmadapt_model.yaml").exists()  # a plain transformers directory
    assert read_manifest(export)["kind"] == "export:hf"


@pytest.mark.slow
def test_quickstart_hf_vlm_meets_its_targets(tmp_path):
    command = [sys.executable, "-m", "mmadapt.cli", "quickstart", "hf-vlm", "--out", str(tmp_path / "q")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.9 > metrics["eval_accuracy_before"]
    assert metrics["reload_eval_accuracy"] == metrics["eval_accuracy"]
    assert metrics["export_max_logit_diff"] <= 1e-4
