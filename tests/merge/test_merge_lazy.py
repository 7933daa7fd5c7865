"""Streamed safetensors I/O: lazy reads of sharded HF models, planned shards written tensor by tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmadapt.errors import DataError
from mmadapt.merge.lazy import ShardedWriter, TensorInfo, TensorSource, load_dir, plan_shards


def test_reads_a_sharded_transformers_model_lazily(family):
    base = family["base"]
    assert (base / "model.safetensors.index.json").is_file()
    source = TensorSource.from_dir(base, "base")
    assert len(source.files) > 1
    state = load_dir(base)
    assert set(source.names()) == set(state)
    for name in source.names():
        assert source.info[name].shape == tuple(state[name].shape)
        assert torch.equal(source.get(name), state[name])


def test_writer_round_trips_every_dtype_across_shards(tmp_path):
    tensors = {
        "a.weight": torch.randn(40, 30),
        "b.weight": torch.randn(7, 3).to(torch.bfloat16),
        "c.weight": torch.randn(100).to(torch.float16),
        "d.ids": torch.arange(11, dtype=torch.int64),
        "e.mask": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
    }
    infos = [TensorInfo(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with ShardedWriter(tmp_path, infos, max_shard_bytes=1000) as writer:
        for name, t in tensors.items():
            writer.write(name, t)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == len(plan_shards(infos, 1000)) > 1
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    loaded = {}
    for shard in shards:
        loaded.update(load_file(str(tmp_path / shard)))  # the safetensors library accepts our headers
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)
    assert index["metadata"]["total_size"] == sum(i.nbytes for i in infos)


def test_writer_output_loads_with_transformers(tmp_path, family):
    from transformers import AutoModelForCausalLM

    source = TensorSource.from_dir(family["a"], "a")
    out = tmp_path / "copy"
    infos = list(source.info.values())
    with ShardedWriter(out, infos, max_shard_bytes=20_000) as writer:
        for info in infos:
            writer.write(info.name, source.get(info.name))
    (out / "config.json").write_text((family["a"] / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(family["a"])
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), original.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_writer_refuses_out_of_plan_writes(tmp_path):
    infos = [TensorInfo("x", torch.float32, (2,)), TensorInfo("y", torch.float32, (2,))]
    with pytest.raises(RuntimeError, match="plan order"):
        with ShardedWriter(tmp_path / "o1", infos) as writer:
            writer.write("y", torch.zeros(2))
    with pytest.raises(RuntimeError, match="planned torch.float32 \\[2\\]"):
        with ShardedWriter(tmp_path / "o2", infos) as writer:
            writer.write("x", torch.zeros(3))
    with pytest.raises(RuntimeError, match="only 1 of 2"):
        with ShardedWriter(tmp_path / "o3", infos) as writer:
            writer.write("x", torch.zeros(2))


def test_unreadable_inputs_are_data_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="bad: cannot read"):
        TensorSource.from_dir(tmp_path / "bad", "bad")
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(DataError, match="only pickle weights"):
        TensorSource.from_dir(tmp_path / "pickle", "pickle")
    (tmp_path / "idx").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "idx" / "model-1.safetensors"))
    (tmp_path / "idx" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-1.safetensors", "v": "model-2.safetensors"}}))
    with pytest.raises(DataError, match="shards that do not exist"):
        TensorSource.from_dir(tmp_path / "idx", "idx")
