"""Attacks 3-6: nothing the user had is deleted, a training output is replaced in one step, one writer at a
time, stale temp directories are cleaned, modes follow the umask, and resume state is never unpickled freely."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket

import pytest
import torch
import yaml
from security_helpers import edited_checkpoint, files_of
from safetensors.torch import load_file

from mmadapt.cli import main
from mmadapt.run_config import load_run
from mmadapt.errors import ConfigError, DataError
from mmadapt.io import atomic_directory, atomic_write_json, clean_stale, writer_lock
from mmadapt.lineage import verify
from mmadapt.train.run import train


def user_dir(path):
    """A directory the user cares about (not written by mmadapt)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("my notes")
    return path


def merge_yaml(hf_model, tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({"method": "linear", "models": [{"model": str(hf_model)}, {"model": str(hf_model)}]}))
    return str(path)


def test_merge_never_replaces_what_it_did_not_write(hf_model, tmp_path):
    config, out = merge_yaml(hf_model, tmp_path), user_dir(tmp_path / "out")
    for extra in ([], ["--overwrite"]):
        assert main(["merge", config, "--out", str(out), *extra]) == 2
        assert files_of(out) == {"notes.txt": b"my notes"}
    fresh = tmp_path / "merged"
    assert main(["merge", config, "--out", str(fresh)]) == 0
    assert main(["merge", config, "--out", str(fresh)]) == 2  # an earlier merge: only with --overwrite
    assert main(["merge", config, "--out", str(fresh), "--overwrite"]) == 0 and verify(fresh) == []
    (fresh / "notes.txt").write_text("mine")  # the user adds a file to the merged model
    assert main(["merge", config, "--out", str(fresh), "--overwrite"]) == 2
    assert (fresh / "notes.txt").read_text() == "mine"


def test_export_and_edit_refuse_an_existing_output(checkpoint, hf_model, tmp_path):
    out = user_dir(tmp_path / "out")
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--overwrite"]) == 2
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"prompt": "{} jumps over the", "subject": "the quick brown fox", "target_new": "dog"}) + "\n")
    assert main(["edit", "apply", "--model", str(hf_model), "--edits", str(edits), "--out", str(out), "--overwrite"]) == 2
    assert files_of(out) == {"notes.txt": b"my notes"}
    exported = tmp_path / "exported"
    assert main(["export", "--model", str(checkpoint), "--out", str(exported)]) == 0
    assert main(["export", "--model", str(checkpoint), "--out", str(exported)]) == 2
    assert main(["export", "--model", str(checkpoint), "--out", str(exported), "--overwrite"]) == 0


def test_edit_revert_overwrites_only_its_own_output(hf_model, tmp_path):
    edited, _ = edited_checkpoint(hf_model, tmp_path)
    out = tmp_path / "reverted"
    assert main(["edit", "revert", str(edited), "--out", str(out)]) == 0
    assert main(["edit", "revert", str(edited), "--out", str(out)]) == 2
    assert main(["edit", "revert", str(edited), "--out", str(out), "--overwrite"]) == 0
    assert main(["edit", "revert", str(edited), "--out", str(user_dir(tmp_path / "mine")), "--overwrite"]) == 2


def test_training_refuses_a_foreign_directory_and_needs_overwrite(run_config, tmp_path):
    mine = user_dir(tmp_path / "mine")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="never deletes"):
            train(load_run(run_config(mine)), overwrite=overwrite)
    assert files_of(mine) == {"notes.txt": b"my notes"}
    out = tmp_path / "run"
    train(load_run(run_config(out, save_steps=1)))
    first = files_of(out)
    with pytest.raises(ConfigError, match="--overwrite"):
        train(load_run(run_config(out)))
    assert files_of(out) == first  # refused before anything changed (checkpoints/ and llm/ included)
    train(load_run(run_config(out, lr=1e-3)), overwrite=True)
    assert verify(out) == [] and files_of(out)["llm/model.safetensors"] != first["llm/model.safetensors"]
    (out / "llm" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not write.*llm/notes.txt"):
        train(load_run(run_config(out)), overwrite=True)


def test_train_cli_has_overwrite(run_config, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path / "run")))
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 2
    assert main(["train", str(path), "--overwrite"]) == 0


def _killed_retrain(raw, where):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    if where == "publishing":  # after the new output is assembled beside the old one, before the rename
        import mmadapt.lineage

        def kill(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        mmadapt.lineage.write_manifest = kill
    train(load_run(raw), overwrite=True, callbacks=[Kill()] if where == "training" else [])


@pytest.mark.parametrize("where", ["training", "publishing"])
def test_a_killed_retrain_leaves_the_previous_output_whole(run_config, tmp_path, where):
    from mmadapt.model import MultimodalLM

    out = tmp_path / "run"
    train(load_run(run_config(out)))
    before = files_of(out)
    proc = mp.get_context("fork").Process(target=_killed_retrain, args=(run_config(out, lr=1e-3, max_steps=3), where))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL
    after = files_of(out)
    for name in ("llm/model.safetensors", "mmadapt_model.yaml", "manifest.json", "metrics.json", "config.yaml"):
        assert after[name] == before[name], name
    assert verify(out) == []
    MultimodalLM.from_pretrained(out)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-"))
    assert len(leftovers) == (where == "publishing")
    with pytest.raises(ConfigError, match="--overwrite"):  # the next run, even refused, cleans what the killed one left
        train(load_run(run_config(out)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".run.tmp-", ".run.old-"))]


def test_loading_refuses_a_mixed_or_unfinished_directory(checkpoint, tmp_path, make_model_config):
    from mmadapt.model import MultimodalLM

    torch.manual_seed(1)
    other = MultimodalLM.from_config(make_model_config("gpt2", image=False)).save_pretrained(tmp_path / "other")
    (checkpoint / "llm" / "model.safetensors").write_bytes((other / "llm" / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="SHA-256 differs"):
        MultimodalLM.from_pretrained(checkpoint)
    (checkpoint / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        MultimodalLM.from_pretrained(checkpoint)
    assert main(["generate", "hello", "--model", str(checkpoint)]) == 2


def test_a_second_writer_is_refused_with_a_message(run_config, tmp_path):
    out = tmp_path / "run"
    with writer_lock(out):
        with pytest.raises(ConfigError, match="another mmadapt process is writing"):
            train(load_run(run_config(out)))
    assert not out.exists()
    train(load_run(run_config(out)))  # the lock is released: the next writer proceeds


def _dead_pid() -> int:
    proc = mp.get_context("fork").Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def test_stale_temp_directories_are_cleaned_and_live_ones_kept(hf_model, tmp_path):
    host, dead = socket.gethostname().replace("-", "_").replace(".", "_"), _dead_pid()
    out = tmp_path / "merged"
    stale = tmp_path / f".merged.tmp-{host}-{dead}-abc"
    live = tmp_path / f".merged.tmp-{host}-{os.getpid()}-def"
    for d in (stale, live):
        (d / "llm").mkdir(parents=True)
        (d / "llm" / "model.safetensors").write_bytes(b"x" * 1000)
    assert main(["merge", merge_yaml(hf_model, tmp_path), "--out", str(out)]) == 0
    assert not stale.exists() and live.exists()


def _killed_merge(config, out):
    import mmadapt.merge.lazy as lazy
    from mmadapt.merge.merge import load_merge_config, run_merge

    def kill(self, name, tensor):
        os.kill(os.getpid(), signal.SIGKILL)

    lazy.ShardedWriter.write = kill
    run_merge(load_merge_config(config), out)


def test_a_killed_merge_leaves_a_temp_copy_that_the_next_merge_removes(hf_model, tmp_path):
    config, out = merge_yaml(hf_model, tmp_path), tmp_path / "merged"
    proc = mp.get_context("fork").Process(target=_killed_merge, args=(config, out))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".merged.tmp-*"))) == 1
    assert main(["merge", config, "--out", str(out)]) == 0
    assert not list(tmp_path.glob(".merged.tmp-*")) and verify(out) == []


def test_a_previous_output_parked_by_a_killed_replace_is_restored(tmp_path):
    host, dead = socket.gethostname().replace("-", "_").replace(".", "_"), _dead_pid()
    parked = tmp_path / f".out.old-{host}-{dead}-abc" / "out"
    parked.mkdir(parents=True)
    (parked / "weights.safetensors").write_bytes(b"previous")
    assert clean_stale(tmp_path / "out") and (tmp_path / "out" / "weights.safetensors").read_bytes() == b"previous"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker if unpickled freely


def test_resume_state_is_never_unpickled_freely(run_config, tmp_path):
    out = tmp_path / "run"
    train(load_run(run_config(out, save_steps=1)))
    checkpoint = out / "checkpoints" / "checkpoint-2"
    # weights in checkpoints are safetensors; only optimizer/scheduler/RNG state is in torch's pickle format
    assert (checkpoint / "llm" / "model.safetensors").is_file()
    assert not [p for p in checkpoint.rglob("*") if p.suffix in (".bin",)]
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, checkpoint / "optimizer.pt")
    with pytest.raises(DataError, match="checkpoint-2.*refused"):
        train(load_run(run_config(out, max_steps=3)), resume=True)
    assert not marker.exists()
    assert load_file(str(out / "llm" / "model.safetensors"))  # the finished output is still there


def test_inputs_kept_inside_output_dir_survive_runs_and_reruns(run_config, tmp_path):
    from mmadapt.lineage import read_manifest

    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    raw = run_config(out)
    (out / "data" / "train.jsonl").write_bytes(open(raw["data"]["train"], "rb").read())
    raw["data"]["train"] = str(out / "data" / "train.jsonl")
    before = files_of(out / "data")
    train(load_run(raw))
    train(load_run(raw), overwrite=True)
    assert files_of(out / "data") == before and verify(out) == []
    assert not [f for f in read_manifest(out)["outputs"] if f.startswith("data")]  # the user's, not ours
    staged = {**raw, "stages": [{"name": "a"}, {"name": "b"}]}
    staged["output_dir"] = str(tmp_path / "staged")
    (tmp_path / "staged" / "data").mkdir(parents=True)
    (tmp_path / "staged" / "data" / "train.jsonl").write_bytes((out / "data" / "train.jsonl").read_bytes())
    staged["data"] = {**raw["data"], "train": str(tmp_path / "staged" / "data" / "train.jsonl")}
    train(load_run(staged))
    with pytest.raises(ConfigError, match="--overwrite"):
        train(load_run(staged))
    train(load_run(staged), overwrite=True)
    assert (tmp_path / "staged" / "data" / "train.jsonl").is_file() and verify(tmp_path / "staged" / "b") == []


def test_a_users_checkpoints_folder_is_not_taken_for_run_state(run_config, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="never deletes"):
        train(load_run(run_config(out)), overwrite=True)
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"


def test_rag_build_overwrite_replaces_only_an_earlier_index(tmp_path):
    from security_helpers import StandInEmbedder

    from mmadapt.rag.store import RagIndex

    mine = user_dir(tmp_path / "mine")
    with pytest.raises(ConfigError, match="never deletes"):
        RagIndex.build(mine, [], embedder=StandInEmbedder(), overwrite=True)
    assert files_of(mine) == {"notes.txt": b"my notes"}
    RagIndex.build(tmp_path / "index", [], embedder=StandInEmbedder())[0]._close()
    RagIndex.build(tmp_path / "index", [], embedder=StandInEmbedder(), overwrite=True)[0]._close()
