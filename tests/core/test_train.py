"""The trainer: it learns, freezing holds, outputs are complete, a killed run resumes to the same weights."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mmadapt.run_config import load_run
from mmadapt.lineage import read_manifest, verify
from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder
from mmadapt.train.run import train


def run_config(tmp_path, **training):
    data = tmp_path / "data"
    return {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {
            "llm": {"config": tiny_llm_config("llama", hidden=32, heads=2), "tokenizer": f"{data}/tokenizer"},
            "encoders": {"image": tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1)},
            "connectors": {"image": {"name": "mlp"}},
        },
        "data": {"generate": {"name": "shapes", "out": str(data), "n_train": 48, "n_eval": 16, "image_size": 16},
                 "train": f"{data}/train.jsonl", "eval": f"{data}/eval.jsonl", "max_length": 48},
        "training": {"batch_size": 8, "lr": 3e-3, "logging_steps": 1, "train_modules": ["connectors", "llm"],
                     "warmup_ratio": 0.0, **training},
    }


def weights(out):
    state = load_file(str(out / "multimodal.safetensors"))
    state.update({f"llm.{k}": v for k, v in load_file(str(out / "llm" / "model.safetensors")).items()})
    return state


def test_training_learns_freezes_and_writes_everything(tmp_path):
    from mmadapt.model import MultimodalLM

    from mmadapt.data.loading import generate_data

    cfg = load_run(run_config(tmp_path, max_steps=12, lr=1e-2))
    generate_data(cfg.data)
    torch.manual_seed(0)
    before = MultimodalLM.from_config(cfg.model)  # same seed as train(): identical initial weights
    metrics = train(cfg)
    out = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "log.jsonl", "loss.png", "manifest.json", "mmadapt_model.yaml"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert sum(losses[-3:]) / 3 < losses[0] * 0.85, losses
    assert metrics["train_tokens_per_second"] > 0 and "eval_loss" in metrics
    after = weights(out)
    init = {f"encoders.{k}": v for k, v in before.encoders.state_dict().items()}
    init.update({f"connectors.{k}": v for k, v in before.connectors.state_dict().items()})
    assert all(torch.equal(after[k], v) for k, v in init.items() if k.startswith("encoders."))  # frozen
    assert all(not torch.equal(after[k], v) for k, v in init.items() if k.startswith("connectors."))  # trained
    manifest = read_manifest(out)
    assert manifest["kind"] == "training" and "llm/model.safetensors" in manifest["files"]
    assert verify(out) == []


def _killed_run(raw, kill_at):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    train(load_run(raw), callbacks=[Kill()])


def test_killed_run_resumes_to_the_same_final_weights(tmp_path):
    reference = run_config(tmp_path / "a", max_steps=8, save_steps=2)
    train(load_run(reference))
    interrupted = {**run_config(tmp_path / "a", max_steps=8, save_steps=2), "output_dir": str(tmp_path / "b" / "run")}
    proc = mp.get_context("fork").Process(target=_killed_run, args=(interrupted, 5))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL
    out = tmp_path / "b" / "run"
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(Exception, match="--resume"):
        train(load_run(interrupted))  # a partial run is never silently overwritten
    train(load_run(interrupted), resume=True)
    a, b = weights(tmp_path / "a" / "run"), weights(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_cli_train_with_overrides_and_bad_key_exit_codes(tmp_path):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path, max_steps=2)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "mmadapt.cli", "train", str(path), "--set", "training.lr=1e-4"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["training"]["lr"] == 1e-4
    bad = subprocess.run([sys.executable, "-m", "mmadapt.cli", "train", str(path), "--set", "training.lrr=1"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "training.lrr" in bad.stderr and "did you mean 'lr'" in bad.stderr
    lineage = subprocess.run([sys.executable, "-m", "mmadapt.cli", "lineage", str(tmp_path / "run"), "--verify"],
                             capture_output=True, text=True, env=env)
    assert lineage.returncode == 0 and "verify: OK" in lineage.stdout
    image = next((tmp_path / "data" / "images").iterdir())
    gen = subprocess.run([sys.executable, "-m", "mmadapt.cli", "generate", "--model", str(tmp_path / "run"),
                          "--image", str(image), "what colour is the shape?", "--max-new-tokens", "3"],
                         capture_output=True, text=True, env=env)
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr[-2000:]


def test_feature_cache_gives_the_same_training_and_is_reused(tmp_path):
    raw = run_config(tmp_path, max_steps=3)
    raw["data"].pop("eval")
    train(load_run(raw))
    plain = weights(tmp_path / "run")
    cached_cfg = {**raw, "output_dir": str(tmp_path / "cached"), "data": {**raw["data"], "feature_cache": str(tmp_path / "fc")}}
    train(load_run(cached_cfg))
    for key, value in weights(tmp_path / "cached").items():
        torch.testing.assert_close(value, plain[key], rtol=1e-5, atol=1e-6, msg=key)
    entries = list((tmp_path / "fc").rglob("*.safetensors"))
    from mmadapt.io import sha256_file

    distinct = {sha256_file(p) for p in (tmp_path / "data" / "images").glob("train-*.png")}
    assert len(entries) == len(distinct)  # every distinct training image encoded once
    mtimes = {p: p.stat().st_mtime_ns for p in entries}
    train(load_run({**cached_cfg, "output_dir": str(tmp_path / "again")}))  # a later stage / run reuses them
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "fc").rglob("*.safetensors")} == mtimes


def test_deterministic_runs_repeat_bit_for_bit_through_the_cli(tmp_path):
    """training.deterministic switches on TrainingArguments.full_determinism (deterministic kernels, in its own
    process: torch.use_deterministic_algorithms is global); two runs then write identical weights."""
    import yaml

    from mmadapt.train.run import training_arguments

    raw = run_config(tmp_path, max_steps=3, threads=1, deterministic=True)
    raw["data"].pop("eval")
    assert training_arguments(load_run(raw), tmp_path / "ckpt", has_eval=False).full_determinism
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for out in ("a", "b"):
        done = subprocess.run([sys.executable, "-m", "mmadapt.cli", "train", str(path), "--set", f"output_dir={tmp_path / out}"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    first, second = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_finished_runs_checkpoints_keep_their_hidden_files(tmp_path):
    """A sharded FSDP checkpoint holds torch.distributed.checkpoint's `.metadata`; the finished output must carry it
    (resuming from it failed on a GPU with `metadata is None`), while the staging area beside the checkpoints stays out."""
    from pathlib import Path

    from transformers import TrainerCallback

    class ShardedCheckpointFiles(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            shard = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "pytorch_model_fsdp_0"
            shard.mkdir(exist_ok=True)
            (shard / ".metadata").write_bytes(b"dcp")
            (Path(args.output_dir) / ".staging-leftover").mkdir(exist_ok=True)

    raw = run_config(tmp_path, max_steps=2, save_steps=2, threads=1)
    raw["data"].pop("eval")
    train(load_run(raw), callbacks=[ShardedCheckpointFiles()])
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "checkpoint-2" / "pytorch_model_fsdp_0" / ".metadata").read_bytes() == b"dcp"
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
