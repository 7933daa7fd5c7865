"""benchmarks/gpu_check: the CPU dry run trains both SFT variants end to end; the shell script refuses without CUDA."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_trains_padded_and_packed():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--steps", "1",
                           "--warmup", "0", "--variants", "bf16,packed,qlora", "--max-length", "256"],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    rates = json.loads(lines[-1])
    assert set(rates) == {"bf16", "packed"} and all(v > 0 for v in rates.values())
    assert any(line.startswith("qlora: skipped") for line in lines)  # 4-bit needs CUDA: said, not faked


def test_shell_script_refuses_without_cuda():  # CUDA_VISIBLE_DEVICES="" hides any GPU from torch
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "no CUDA device" in done.stderr
