"""FSDP2 (training.distributed.strategy: fsdp) launched with torchrun over 2 ranks: the same weights as 1 process with
twice the accumulation, with and without LoRA, resumable from a sharded checkpoint after kill -9 (bit for bit), and a
complete, loadable mmadapt output gathered on rank 0.

On GPUs the ranks shard over NCCL (one GPU: one rank). Without GPUs they run the real FSDP2 engine over gloo through
tests/train/fsdp_cpu.py, which lifts the one gate that makes accelerate drop FSDP on CPU (mmadapt itself refuses
`strategy: fsdp` on a CPU launch; tested in test_fsdp_config.py)."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import yaml
from pathlib import Path

from tests.core.test_train import run_config, weights

ROOT = Path(__file__).resolve().parents[2]

NPROC = min(2, torch.cuda.device_count()) or 2
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# torchrun sets LOCAL_RANK even for one process, so accelerate sets up a process group and keeps the FSDP plugin
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NPROC), "-m", "mmadapt.cli", "train"]


@pytest.fixture(scope="module", autouse=True)
def _cpu_harness(tmp_path_factory):
    """Without GPUs, the launched ranks import the harness first (see the module docstring)."""
    if torch.cuda.is_available():
        yield
        return
    from tests.train.fsdp_cpu import cpu_fsdp_pythonpath

    folder = cpu_fsdp_pythonpath(tmp_path_factory.mktemp("fsdp_cpu"))
    if folder is None:
        pytest.skip("this accelerate's AcceleratorState no longer has the device-type list the CPU harness patches")
    previous = ENV.get("PYTHONPATH")
    ENV["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT), *([previous] if previous else [])])
    yield
    ENV.pop("PYTHONPATH") if previous is None else ENV.update(PYTHONPATH=previous)


def config_file(tmp_path, peft=False, **training):
    # deterministic: on a GPU the two launches are compared bit for bit, not through non-deterministic kernels
    raw = run_config(tmp_path, **{"max_steps": 4, "batch_size": 4, "lr": 3e-3, "threads": 1, "deterministic": True,
                                  **training})
    raw["data"].pop("eval")
    if peft:
        raw["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        raw["training"]["train_modules"] = ["connectors"]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(args, **kw):
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600, **kw)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def single(path, out):
    return run([sys.executable, "-m", "mmadapt.cli", "train", str(path), "--set", f"training.grad_accum={NPROC}",
                "--set", f"output_dir={out}"])


def fsdp(path, out, *extra):
    return run([*LAUNCH, str(path), "--set", "training.distributed.strategy=fsdp", "--set", f"output_dir={out}", *extra])


def assert_same(a_dir, b_dir):
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    worst = max(a, key=lambda k: float((a[k] - b[k]).abs().max()))
    gap = float((a[worst] - b[worst]).abs().max())
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5,
                                   msg=f"{key} (largest gap {gap:.2e} in {worst}, of {len(a)} tensors)")


def test_fsdp_equals_one_process_and_saves_a_loadable_output(tmp_path):
    from mmadapt.model import MultimodalLM

    path = config_file(tmp_path)
    single(path, tmp_path / "single")
    fsdp(path, tmp_path / "fsdp")
    assert_same(tmp_path / "single", tmp_path / "fsdp")
    out = tmp_path / "fsdp"
    for name in ("manifest.json", "config.yaml", "metrics.json", "mmadapt_model.yaml", "llm/model.safetensors"):
        assert (out / name).is_file(), name
    model = MultimodalLM.from_pretrained(out)  # checks the manifest against the weight files
    trained = weights(out)
    for name, tensor in model.state_dict().items():
        if name in trained:
            torch.testing.assert_close(tensor, trained[name], msg=name)


def test_fsdp_with_lora_equals_one_process(tmp_path):
    path = config_file(tmp_path, peft=True)
    single(path, tmp_path / "single")
    fsdp(path, tmp_path / "fsdp")
    assert (tmp_path / "fsdp" / "adapter").is_dir() or (tmp_path / "fsdp" / "llm").is_dir()
    assert_same(tmp_path / "single", tmp_path / "fsdp")


def test_kill9_then_resume_from_sharded_checkpoint_matches_uninterrupted(tmp_path):
    import signal
    import time

    # 40 steps, a checkpoint every 2: the kill lands mid-run even where a step takes milliseconds
    path = config_file(tmp_path, max_steps=40, save_steps=2, save_total_limit=3)
    single(path, tmp_path / "single")
    out = tmp_path / "fsdp"
    args = [*LAUNCH, str(path), "--set", "training.distributed.strategy=fsdp", "--set", f"output_dir={out}"]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 300
    while not (first / "trainer_state.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]  # torchrun and its ranks
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run; ranks in a session of their own are killed one by one below
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(tree, timeout=60)
    proc.wait()
    assert not (out / "manifest.json").exists()
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "pytorch_model_fsdp_0" / ".metadata").is_file() for c in checkpoints)  # sharded (DCP)
    fsdp(path, out, "--resume")
    assert_same(tmp_path / "single", out)
