"""Two CPU processes (accelerate launch, gloo) give the same weights as one process with twice the gradient
accumulation (the loss is normalised over the whole accumulation window and all processes).

accelerate's `--cpu --num_processes 2` starts several processes only through mpirun (MPI); without MPI it
starts one. `--multi_gpu` on a machine without GPUs starts them through torchrun, and the Trainer then runs
DDP over gloo on the CPU: that is what this test launches (and what the README documents)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from tests.core.test_train import run_config, weights


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_processes_equal_one_process_with_double_accumulation(tmp_path):
    raw = run_config(tmp_path, max_steps=4, batch_size=4, lr=3e-3)
    raw["data"].pop("eval")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "mmadapt.cli", "train", str(path), "--set", "training.grad_accum=2",
         "--set", f"output_dir={tmp_path / 'single'}"], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "mmadapt.cli", "train", str(path), "--set", f"output_dir={tmp_path / 'ddp'}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    init_differs = [k for k in a if k.startswith("connectors.")]
    assert init_differs  # the connector trained in both runs
