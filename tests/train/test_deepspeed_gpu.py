"""DeepSpeed ZeRO-2 / ZeRO-3 (training.distributed.strategy: deepspeed with the shipped examples/deepspeed JSONs),
launched with torchrun on a GPU: the run trains, its weights match a plain single-process run (fp32, same data
order), and its output is a complete mmadapt checkpoint (ZeRO-3's partitioned parameters gathered on save).
DeepSpeed runs only on GPUs; on a CPU machine these tests skip (the JSONs are checked in test_deepspeed_config)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.test_fsdp import assert_same, config_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed needs a GPU and the deepspeed package (pip install 'mmadapt[deepspeed]')")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def train(args):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_matches_one_process_and_saves_a_loadable_output(tmp_path, stage):
    from mmadapt.model import MultimodalLM

    path = config_file(tmp_path)
    train(["-m", "mmadapt.cli", "train", str(path), "--set", f"output_dir={tmp_path / 'single'}"])
    train(["-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "mmadapt.cli", "train", str(path),
           "--set", "training.distributed.strategy=deepspeed",
           "--set", f"training.distributed.deepspeed={ROOT / 'examples' / 'deepspeed' / f'{stage}.json'}",
           "--set", f"output_dir={tmp_path / stage}"])
    assert_same(tmp_path / "single", tmp_path / stage)
    MultimodalLM.from_pretrained(tmp_path / stage)  # checks the manifest against the weight files
