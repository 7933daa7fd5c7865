"""Helpers shared by the attack tests: a marker-writing 'payload', a hand-made edited checkpoint, a stand-in
embedder whose recorded config asks for remote code, and a snapshot of a directory's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from mmadapt.io import sha256_file


def payload(marker: Path) -> str:
    """Python that, if ever imported, proves code from an artefact ran (it writes `marker`)."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code from the artefact ran')\n"
            "from transformers import GPT2Config, GPT2LMHeadModel\n"
            "class EvilConfig(GPT2Config):\n    model_type = 'gpt2'\n"
            "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n")


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def edited_checkpoint(hf_model, tmp_path):
    """A hand-made edited checkpoint of `hf_model` whose record is valid (one tensor patched by +1)."""
    edited = tmp_path / "edited"
    edited.mkdir()
    for f in hf_model.iterdir():
        if f.name != "manifest.json":
            (edited / f.name).write_bytes(f.read_bytes())
    key = "transformer.h.0.mlp.c_proj.weight"
    state = load_file(str(edited / "model.safetensors"))
    original = state[key].clone()
    state[key] = state[key] + 1
    save_file(state, str(edited / "model.safetensors"), metadata={"format": "pt"})
    (edited / "edit").mkdir()
    save_file({key: original}, str(edited / "edit" / "original.safetensors"))
    record = {"llm_dir": ".", "checkpoint_kind": "hf", "requests": [],
              "patched": {key: {"file": "model.safetensors", "key": key}},
              "base": {"path": str(hf_model), "files": {"model.safetensors": sha256_file(hf_model / "model.safetensors")}}}
    (edited / "edit" / "edit.json").write_text(json.dumps(record))
    return edited, record


class StandInEmbedder:
    """A stand-in embedder (the index's recorded config asks for remote code)."""

    def __init__(self):
        from mmadapt.rag.chunk import word_spans
        from mmadapt.rag.embed import EmbedderConfig

        self.config = EmbedderConfig(name="someone/else", trust_remote_code=True)
        self.dim, self.max_tokens, self.modalities = 8, 64, ("text",)
        self.identity = {"type": "sentence-transformers", "name": "someone/else", "dim": 8}
        self.token_spans = word_spans

    def embed_documents(self, texts):
        return np.ones((len(texts), 8), dtype=np.float32)

    embed_queries = embed_documents
