"""Attack 1: no remote code from an artefact. A checkpoint (or index) that asks for trust_remote_code and ships
Python is loaded as data: its code runs only when the person running the command passes --trust-remote-code."""

from __future__ import annotations

import json

import pytest
import yaml
from security_helpers import StandInEmbedder, payload

from mmadapt.cli import main
from mmadapt.model import MODEL_CONFIG_FILE, MultimodalLM, untrusted_yaml


def arm(checkpoint, marker):
    """Make `checkpoint` hostile: its yaml asks for remote code and llm/ ships a module that auto_map points at."""
    cfg = yaml.safe_load((checkpoint / MODEL_CONFIG_FILE).read_text())
    cfg["llm"]["trust_remote_code"] = True
    (checkpoint / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    config = json.loads((checkpoint / "llm" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (checkpoint / "llm" / "config.json").write_text(json.dumps(config))
    (checkpoint / "llm" / "evil.py").write_text(payload(marker))


def test_generate_never_runs_a_checkpoints_code(checkpoint, tmp_path, capsys):
    marker = tmp_path / "pwned"
    arm(checkpoint, marker)
    assert main(["generate", "hello world", "--model", str(checkpoint), "--max-new-tokens", "2"]) == 0
    assert not marker.exists()
    model = MultimodalLM.from_pretrained(checkpoint)
    assert not model.model_config.llm.trust_remote_code and not marker.exists()


def test_the_attack_is_real_when_the_user_opts_in(checkpoint, tmp_path, monkeypatch):
    """Control: the same checkpoint does run its code once the caller passes trust_remote_code=True."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    marker = tmp_path / "pwned"
    arm(checkpoint, marker)
    try:
        MultimodalLM.from_pretrained(checkpoint, trust_remote_code=True)
    except Exception:  # noqa: BLE001 - whatever the payload does next; only its having run matters here
        pass
    assert marker.exists()


def test_every_trust_remote_code_in_a_checkpoint_yaml_is_forced_off(tmp_path):
    path = tmp_path / MODEL_CONFIG_FILE
    path.write_text(yaml.safe_dump({
        "llm": {"name_or_path": "x", "trust_remote_code": True},
        "vlm": {"name_or_path": "y", "trust_remote_code": True},
        "encoders": {"audio": {"name": "hf_audio", "trust_remote_code": True, "nested": [{"trust_remote_code": True}]}},
    }))
    raw = untrusted_yaml(path)
    assert raw["llm"]["trust_remote_code"] is False and raw["vlm"]["trust_remote_code"] is False
    assert raw["encoders"]["audio"]["trust_remote_code"] is False
    assert raw["encoders"]["audio"]["nested"][0]["trust_remote_code"] is False
    assert untrusted_yaml(path, trust_remote_code=True)["encoders"]["audio"]["trust_remote_code"] is True


def test_an_index_manifest_never_enables_remote_code(tmp_path):
    from mmadapt.rag.store import RagIndex

    index = RagIndex.create(tmp_path / "index", embedder=StandInEmbedder())
    index._close()
    recorded = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert recorded["config"]["embedder"]["trust_remote_code"] is True  # the hostile index asks for it
    opened = RagIndex.open(tmp_path / "index")
    assert opened.config.embedder.trust_remote_code is False  # what the embedder would be loaded with


def test_an_edited_checkpoint_is_loaded_without_remote_code(hf_model, tmp_path):
    from mmadapt.editing.checkpoint import load_llm, open_checkpoint

    marker = tmp_path / "pwned"
    config = json.loads((hf_model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (hf_model / "config.json").write_text(json.dumps(config))
    (hf_model / "evil.py").write_text(payload(marker))
    load_llm(open_checkpoint(hf_model))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["generate"])
def test_the_opt_in_is_a_cli_flag(command):
    from mmadapt.cli import build_parser

    args = build_parser(command).parse_args([command, "x", "--model", "m", "--trust-remote-code"])
    assert args.trust_remote_code is True
