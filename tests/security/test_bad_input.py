"""Zero tracebacks on bad input (issue 13, part 7): each case exits 2 (CLI) or raises the project's own
error (library call), and the message names the file, line or key and what is valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mmadapt.cli import main
from mmadapt.errors import ConfigError, DataError


def run_cli(capsys, *argv: str) -> str:
    """Run the real CLI in-process; assert exit code 2 and return its stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err
    return err


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- run configs: (name, how to break the valid run config, text the message must hold) ---------------------------


def _raw(text: bytes):
    return lambda cfg, path: path.write_bytes(path.read_bytes() + text)


def _set(keys: str, value):
    def apply(cfg, path):
        node = cfg
        *parents, last = keys.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return apply


def _text(replace: str, by: str):
    def apply(cfg, path):
        text = path.read_text()
        assert replace in text
        path.write_text(text.replace(replace, by, 1))
    return apply


CONFIG_CASES = [
    ("invalid-utf8", _raw(b"# caf\xe9\n"), ["run.yaml", "line", "UTF-8"]),
    ("binary-byte", _raw(b"note: a\x00b\n"), ["run.yaml"]),
    ("self-reference", _set("output_dir", "${output_dir}"), ["output_dir", "itself"]),
    ("reference-cycle", lambda cfg, path: (_set("data.train", "${output_dir}/x")(cfg, path),
                                           _set("output_dir", "${data.train}")(cfg, path)), ["refers back to itself"]),
    ("recursive-anchor", _text("seed: 0", "seed: 0\nloop: &a [1, *a]"), ["loop", "anchor"]),
    ("lr-nan", _set("training.lr", float("nan")), ["training.lr", "finite"]),
    ("lr-inf", _text("lr: 0.01", "lr: .inf"), ["training.lr", "finite"]),
    ("batch-size-1e30-string", _text("batch_size: 4", "batch_size: 1e30"), ["training.batch_size", "integer"]),
    ("batch-size-1e30-float", _text("batch_size: 4", "batch_size: 1.0e+30"), ["training.batch_size"]),
    ("batch-size-huge-int", _set("training.batch_size", 10**30), ["training.batch_size", "out of range"]),
    ("objective-name-mapping", _set("objective.name", {"a": 1}), ["objective.name", "string", "sft"]),
    ("objective-name-list", _set("objective.name", ["sft"]), ["objective.name", "string"]),
    ("connector-name-list", lambda cfg, path: (_set("model.encoders", {"image": {"name": "timm", "model_name": "vit_tiny_patch16_224"}})(cfg, path),
                                               _set("model.connectors", {"image": {"name": ["mlp"]}})(cfg, path)),
     ["connectors.image.name", "string", "mlp"]),
    ("encoder-name-mapping", lambda cfg, path: (_set("model.encoders", {"image": {"name": {"timm": 1}}})(cfg, path),
                                                _set("model.connectors", {"image": {"name": "mlp"}})(cfg, path)),
     ["encoders.image.name", "string", "timm"]),
    ("bad-jinja-template", _set("data.chat_template", "{% if messages %}{{ x }"), ["data.chat_template", "Jinja", "line"]),
]


@pytest.mark.parametrize("name,mutate,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_run_config_exits_2(capsys, tmp_path, run_config, name, mutate, expected):
    cfg = run_config(tmp_path / "out")
    path = write_config(tmp_path, cfg)
    mutate(cfg, path)
    err = run_cli(capsys, "train", str(path))
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not (tmp_path / "out" / "llm").exists()


def test_unknown_data_generate_keyword_exits_2(capsys, tmp_path, run_config):
    cfg = run_config(tmp_path / "out")
    cfg["data"]["generate"] = {"name": "shapes", "out": str(tmp_path / "gen"), "n_trian": 10}
    err = run_cli(capsys, "train", str(write_config(tmp_path, cfg)))
    assert "data.generate.n_trian" in err and "n_train" in err
    assert not (tmp_path / "gen").exists()


# --- data files and records: library calls, the project's own error naming the place -------------------------------


def test_invalid_utf8_in_jsonl_names_the_line(tmp_path):
    from mmadapt.data.records import read_records

    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: .*UTF-8"):
        read_records(path)


@pytest.mark.parametrize("turns,expected", [
    ([{"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "yo"}], r"conversations\[0\] has role \['human'\]; valid"),
    ([{"from": {"r": 1}, "value": "hi"}, {"from": "gpt", "value": "yo"}], r"conversations\[0\] has role"),
    ([{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"}], r"conversations\[0\] is an assistant"),
    ([{"from": "system", "value": "be kind"}, {"from": "gpt", "value": "hello"}], r"conversations\[1\] is an assistant"),
])
def test_bad_turns_name_the_record(turns, expected):
    from mmadapt.data.templates import to_messages

    with pytest.raises(DataError, match=r"^data\.jsonl:3: " + expected):
        to_messages(turns, "data.jsonl:3")


def test_media_name_longer_than_the_os_allows(tmp_path):
    from mmadapt.data.conversations import resolve_media

    with pytest.raises(DataError, match=r"data\.jsonl:5: image path .* cannot be opened"):
        resolve_media("x" * 5000 + ".png", tmp_path, "data.jsonl:5", "image")


def test_bad_jinja_chat_template_names_its_line(tokenizer_dir):
    from transformers import AutoTokenizer

    from mmadapt.data.templates import ensure_chat_template

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with pytest.raises(ConfigError, match=r"data\.chat_template: .*Jinja: line 2"):
        ensure_chat_template(tok, "{% for m in messages %}\n{{ m.content }\n{% endfor %}")


@pytest.mark.parametrize("prompt", ["{} is in {", "{} is in }", "{} is {0} in", "{} lives in {city}"])
def test_edit_prompt_with_stray_braces(tmp_path, prompt):
    from mmadapt.editing.requests import parse_request

    record = {"prompt": prompt, "subject": "Paris", "target_new": "Rome"}
    with pytest.raises(DataError, match=r"edits\.jsonl:4: prompt template .* valid: one '\{\}'"):
        parse_request(record, "edits.jsonl:4")


def test_garbage_manifest_on_lineage_exits_2(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_bytes(b"\xff\xfe{not json")
    err = run_cli(capsys, "lineage", str(tmp_path / "m"))
    assert "manifest.json" in err


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"edits": 3}', b"\xff\x00"])
def test_garbage_edit_json_on_revert_exits_2(capsys, tmp_path, hf_model, content):
    edited = tmp_path / "edited"
    shutil.copytree(hf_model, edited)
    (edited / "edit.json").write_bytes(content)
    err = run_cli(capsys, "edit", "revert", str(edited), "--out", str(tmp_path / "reverted"))
    assert "edit.json" in err or "manifest.json" in err
    assert not (tmp_path / "reverted").exists()


# --- checkpoints: corrupt or mismatched weights, a swapped tokenizer -------------------------------------------------


@pytest.fixture
def vlm_checkpoint(tmp_path, make_model_config):
    """A saved tiny Llama with a ViT encoder and MLP connector (so it has multimodal.safetensors)."""
    from mmadapt.model import MultimodalLM

    return Path(MultimodalLM.from_config(make_model_config("llama")).save_pretrained(tmp_path / "vlm"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("target", ["multimodal.safetensors", "llm/model.safetensors"])
def test_modified_checkpoint_file_on_generate_exits_2(capsys, vlm_checkpoint, target):
    """Truncated weights: the manifest's hashes no longer match, so loading refuses."""
    _truncate(vlm_checkpoint / target)
    err = run_cli(capsys, "generate", "hello", "--model", str(vlm_checkpoint))
    assert target in err and "manifest" in err


@pytest.mark.parametrize("target", ["multimodal.safetensors", "llm/model.safetensors"])
def test_corrupt_weights_with_a_matching_manifest_exit_2(capsys, vlm_checkpoint, target):
    """Corrupt weights whose manifest was re-written to match still fail as our error, naming the file."""
    from mmadapt.lineage import write_manifest

    _truncate(vlm_checkpoint / target)
    write_manifest(vlm_checkpoint, "train")
    err = run_cli(capsys, "generate", "hello", "--model", str(vlm_checkpoint))
    assert target in err and "safetensors" in err


def test_init_from_a_checkpoint_of_another_width_exits_2(capsys, tmp_path, run_config):
    first = run_config(tmp_path / "narrow")
    assert main(["train", str(write_config(tmp_path, first))]) == 0
    capsys.readouterr()
    cfg = run_config(tmp_path / "wide")
    cfg["model"]["llm"]["config"]["hidden_size"] = 64
    cfg["model"]["init_from"] = str(tmp_path / "narrow")
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(cfg))
    err = run_cli(capsys, "train", str(tmp_path / "wide.yaml"))
    assert "model.init_from" in err and "narrow" in err and "same architecture" in err


def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """A few-hundred-byte PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_decompression_bomb_png_in_rag_ingest(tmp_path):
    from mmadapt.rag.ingest import ingest

    bomb = tmp_path / "docs" / "bomb.png"
    bomb.parent.mkdir()
    _png_header_claiming(bomb, 20000, 20000)
    assert bomb.stat().st_size < 1000
    with pytest.raises(DataError, match=r"bomb\.png: .*valid: images of at most \d+ pixels"):
        ingest([bomb.parent])


def test_index_faiss_corrupted_at_the_same_size_is_refused_on_open(tmp_path):
    """Part 8: the SHA-256 recorded at commit is checked on open (the size check alone passes this file)."""
    from mmadapt.rag.chunk import Document, sha256_text
    from mmadapt.rag.embed import EmbedderConfig, load_embedder
    from mmadapt.rag.store import RagIndex

    embedder = load_embedder(EmbedderConfig())
    texts = ["the cat sat on the mat", "paris is in france", "water boils at 100 degrees"]
    docs = [Document(f"{i}.txt", t, f"d{i}", content_hash=sha256_text(t)) for i, t in enumerate(texts)]
    index, _ = RagIndex.build(tmp_path / "index", docs, embedder=embedder)
    faiss_file = next((tmp_path / "index").glob("gen-*/index.faiss"))
    RagIndex.open(tmp_path / "index", embedder=embedder)  # intact: opens
    data = bytearray(faiss_file.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # flip the last vector's bytes: same size
    faiss_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"index\.faiss: SHA-256 differs"):
        RagIndex.open(tmp_path / "index", embedder=embedder)


def test_truncated_wav_is_refused(tmp_path):
    """Part 8: libsndfile reads a cut WAV silently (the samples present); its data chunk size shows the cut."""
    import numpy as np
    import soundfile as sf

    from mmadapt.encoders.audio import load_audio, wav_truncation

    whole = tmp_path / "clip.wav"
    sf.write(whole, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    assert wav_truncation(whole) is None and load_audio(whole, 16000).numel() == 16000
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:20000])
    with pytest.raises(DataError, match=r"cut\.wav is truncated: its header declares 32000 bytes .* holds 19956"):
        load_audio(cut, 16000)
    with pytest.raises(DataError, match="truncated"):
        load_audio(cut.read_bytes(), 16000)


def test_generate_with_a_media_name_longer_than_the_os_allows(capsys, vlm_checkpoint):
    err = run_cli(capsys, "generate", "hello", "--model", str(vlm_checkpoint), "--image", "x" * 5000 + ".png")
    assert "--image: image path" in err and "cannot be opened" in err


@pytest.mark.parametrize("store_update,expected", [
    ({"generation": "1"}, r"store\.generation must be a positive integer, got '1'"),
    ({"embedder": None}, r"store\.embedder must record the embedder"),
])
def test_index_manifest_with_wrong_fields(tmp_path, store_update, expected):
    import json

    from mmadapt.rag.manifest import FORMAT_VERSION, KIND, read_manifest

    store = {"format_version": FORMAT_VERSION, "generation": 1, "embedder": {"type": "st", "name": "m", "dim": 4}}
    store = {k: v for k, v in {**store, **store_update}.items() if v is not None}  # None: the key is missing
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": KIND, "store": store}))
    with pytest.raises(DataError, match=r"manifest\.json: " + expected):
        read_manifest(tmp_path)


def test_tokenizer_swapped_inside_a_checkpoint_exits_2(capsys, vlm_checkpoint):
    """Part 8: the manifest records the tokenizer's vocabulary files; another tokenizer of the same layout is refused."""
    import json

    path = vlm_checkpoint / "llm" / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids exchanged: the same size and layout
    path.write_text(json.dumps(data))
    err = run_cli(capsys, "generate", "hello", "--model", str(vlm_checkpoint))
    assert "llm/tokenizer.json" in err and "swapped tokenizer" in err
