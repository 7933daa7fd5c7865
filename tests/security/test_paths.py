"""Attack 2: a path read from an artefact or config stays inside its directory; one that leaves is refused
before anything is read or written (edit records, stage names, shard names, @checkpoint/ references,
lineage and index manifests)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from security_helpers import StandInEmbedder, edited_checkpoint, files_of
from safetensors.torch import save_file

from mmadapt.cli import main
from mmadapt.errors import ConfigError, DataError
from mmadapt.io import contained_path, sha256_file


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "", "a\x00b", 3])
def test_contained_path_refuses_what_leaves(tmp_path, relative):
    with pytest.raises(ConfigError, match="what"):
        contained_path(tmp_path, relative, "what")


def test_contained_path_follows_symlinks(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert contained_path(tmp_path / "root", "a/b.safetensors", "f") == tmp_path / "root" / "a" / "b.safetensors"
    with pytest.raises(ConfigError, match="leaves"):
        contained_path(tmp_path / "root", "link/secret", "f")


def test_edit_revert_writes_only_inside_its_output(hf_model, tmp_path):
    edited, record = edited_checkpoint(hf_model, tmp_path)
    # control: the hand-made record is valid, so a refusal below is the path check and nothing else
    assert main(["edit", "revert", str(edited), "--out", str(tmp_path / "ok")]) == 0
    assert sha256_file(tmp_path / "ok" / "model.safetensors") == sha256_file(hf_model / "model.safetensors")

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.safetensors").write_bytes((edited / "model.safetensors").read_bytes())
    before = files_of(victim)
    key = next(iter(record["patched"]))
    for bad in ({"patched": {key: {"file": "../../victim/model.safetensors", "key": key}}},
                {"patched": {key: {"file": str(victim / "model.safetensors"), "key": key}}},
                {"llm_dir": "../victim"},
                {"base": {"path": "x", "files": {"../../victim/model.safetensors": "0" * 64}}}):
        (edited / "edit" / "edit.json").write_text(json.dumps({**record, **bad}))
        out = tmp_path / f"out-{len(os.listdir(tmp_path))}"
        assert main(["edit", "revert", str(edited), "--out", str(out)]) == 2
        assert files_of(victim) == before and not out.exists()


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"llm_dir": 3}', "\xff\xfe"])
def test_a_garbage_edit_record_is_a_data_error(hf_model, tmp_path, garbage):
    from mmadapt.editing.checkpoint import read_edit

    edited, _ = edited_checkpoint(hf_model, tmp_path)
    (edited / "edit" / "edit.json").write_bytes(garbage.encode("latin-1"))
    with pytest.raises(DataError, match="edit.json"):
        read_edit(edited)


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ".hidden", "..", "x" * 101])
def test_stage_names_are_single_folders_inside_output_dir(run_config, tmp_path, name):
    from mmadapt.run_config import load_run

    raw = {**run_config(tmp_path / "run"), "stages": [{"name": name}]}
    with pytest.raises(ConfigError, match="stages\\[0\\]"):
        load_run(raw)
    assert not (tmp_path / "x").exists() and not (tmp_path / "run").exists()


def test_shard_names_that_leave_the_model_are_refused(hf_model, tmp_path):
    from mmadapt.merge.lazy import TensorSource

    outside = tmp_path / "outside.safetensors"
    save_file({"secret": torch.ones(2)}, str(outside))
    for shard in ("../outside.safetensors", str(outside)):
        (hf_model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"secret": shard}}))
        with pytest.raises(DataError, match="weight_map"):
            TensorSource.from_dir(hf_model, "model")


def test_a_checkpoint_whose_shard_index_leaves_it_is_not_loaded(checkpoint, tmp_path):
    from mmadapt.model import MultimodalLM

    save_file({"secret": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    (checkpoint / "llm" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"transformer.wte.weight": str(tmp_path / "outside.safetensors")}}))
    with pytest.raises(DataError, match="weight_map"):
        MultimodalLM.from_pretrained(checkpoint)


def test_checkpoint_references_stay_inside_the_checkpoint(checkpoint):
    from mmadapt.model import MODEL_CONFIG_FILE, MultimodalLM

    cfg = yaml.safe_load((checkpoint / MODEL_CONFIG_FILE).read_text())
    cfg["llm"]["tokenizer"] = "@checkpoint/../../../etc"
    (checkpoint / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="llm.tokenizer.*leaves"):
        MultimodalLM.from_pretrained(checkpoint)


def test_lineage_never_hashes_files_outside_the_manifests_directory(checkpoint, tmp_path, capsys):
    from mmadapt.lineage import verify

    (tmp_path / "secret.safetensors").write_bytes(b"secret")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["../secret.safetensors"] = sha256_file(tmp_path / "secret.safetensors")
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(checkpoint)
    assert len(problems) == 1 and "leaves" in problems[0]
    assert main(["lineage", str(checkpoint), "--verify"]) == 1
    (checkpoint / "manifest.json").write_text('{"kind": "x", "files": ["not", "a", "map"]}')
    assert main(["lineage", str(checkpoint)]) == 2 and "files must map" in capsys.readouterr().err


def _index(tmp_path):
    from mmadapt.rag.store import RagIndex

    RagIndex.create(tmp_path / "index", embedder=StandInEmbedder())._close()
    return tmp_path / "index", json.loads((tmp_path / "index" / "manifest.json").read_text())


@pytest.mark.parametrize("mutate", [
    lambda m: m["store"]["sizes"].update({"../../outside": 1}),
    lambda m: m["files"].update({"/etc/passwd": "0" * 64}),
    lambda m: m["store"].update(generation="../x"),
    lambda m: m["store"].pop("embedder"),
])
def test_index_manifests_name_only_files_inside_the_index(tmp_path, mutate):
    from mmadapt.rag.store import RagIndex

    path, manifest = _index(tmp_path)
    mutate(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json"):
        RagIndex.open(path)
