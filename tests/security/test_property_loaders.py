"""Property (issue 13, part 9): any byte-level mutation of a valid config or data file ends in success or in
the project's own error type (ConfigError / DataError), never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmadapt.errors import MMAdaptError

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Bytes that break files in the ways careless editing and corruption do: structure, quoting, encoding, YAML tags.
INTERESTING = [b"{", b"}", b"[", b"]", b":", b",", b'"', b"'", b"\n", b"  ", b"-", b"&a", b"*a", b"!!python/object",
               b"${", b"${output_dir}", b"\x00", b"\xff", b"\xe9", b".nan", b"1e30", b"null", b"[]", b"{}", b"#",
               b"from", b"gpt", b"\\", b"\\u0000", b"99999999999999999999999", b"-1", b"true"]

mutation = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10**6), st.sampled_from(INTERESTING)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 12)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    for op, pos, arg in ops:
        pos = pos % (len(data) + 1)
        if op == "replace":
            data = data[:pos] + arg + data[pos + len(arg):]
        elif op == "insert":
            data = data[:pos] + arg + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + arg:]
        else:
            data = data[:pos]
    return data


def outcome(call) -> str:
    """'ok' or 'refused'; any other exception fails the property with its traceback."""
    try:
        call()
    except MMAdaptError:
        return "refused"
    return "ok"


def mutated_outcomes(path: Path, base: bytes, load, max_ops: int = 3) -> list[str]:
    """Write `base` with 1..max_ops random mutations to `path` and call `load(path)`, over SETTINGS' examples; each
    outcome must be 'ok' or 'refused'. Returns the outcomes."""
    results = []

    @SETTINGS
    @given(st.lists(mutation, min_size=1, max_size=max_ops))
    def check(ops):
        path.write_bytes(mutate(base, ops))
        results.append(outcome(lambda: load(path)))

    check()
    return results


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """One tiny text-only model for every data loader (built once: loaders only read its tokenizer and encoders)."""
    from mmadapt.config import ModelConfig, from_dict
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    tok_dir = tmp_path_factory.mktemp("tok")
    train_word_tokenizer("hello world what is the answer it is four you are kind a b c " * 3, tok_dir,
                         extra_tokens=["<image>", "<audio>", "<video>"])
    config = from_dict(ModelConfig, {"llm": {"config": tiny_llm_config("llama", hidden=32, heads=2),
                                             "tokenizer": str(tok_dir)}})
    return MultimodalLM.from_config(config), tok_dir


def test_run_config_loader_property(tmp_path_factory):
    from mmadapt.run_config import load_run

    base = (Path(__file__).resolve().parents[2] / "mmadapt/quickstart/configs/vlm.yaml").read_bytes()
    results = mutated_outcomes(tmp_path_factory.mktemp("cfg") / "run.yaml", base, load_run, max_ops=4)
    assert len(results) >= 50 and "refused" in results  # the mutations do reach the validator


CONVERSATION = {"conversations": [{"from": "system", "value": "you are kind"}, {"from": "human", "value": "what is it"},
                                  {"from": "gpt", "value": "it is four"}]}
RECORDS = {
    "conversations": [CONVERSATION, {"messages": [{"role": "user", "content": "hello"},
                                                  {"role": "assistant", "content": "world"}]}],
    "text": [{"text": "hello world it is four"}, {"text": "a b c"}],
    "preference": [{"prompt": "what is it", "chosen": "it is four", "rejected": "a b c"},
                   {"prompt": [{"from": "human", "value": "hello"}], "chosen": [{"from": "gpt", "value": "world"}],
                    "rejected": "a"}],
    "kto": [{"prompt": "what is it", "completion": "it is four", "label": True},
            {"prompt": "hello", "completion": "a b c", "label": False}],
}


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_data_loaders_property(tmp_path_factory, text_model, fmt):
    from mmadapt.config import DataConfig, from_dict
    from mmadapt.data.loading import load_data

    model, _ = text_model
    base = "".join(json.dumps(r) + "\n" for r in RECORDS[fmt]).encode()
    folder = tmp_path_factory.mktemp(fmt)
    path = folder / "train.jsonl"
    path.write_bytes(base)
    cfg = from_dict(DataConfig, {"train": str(path), "format": fmt, "max_length": 32})
    assert outcome(lambda: load_data(model.tokenisation_spec(), cfg)) == "ok"  # the unmutated file loads
    results = mutated_outcomes(path, base, lambda _path: load_data(model.tokenisation_spec(), cfg))
    assert len(results) >= 50 and "refused" in results


def test_edit_requests_property(tmp_path_factory):
    from mmadapt.editing.requests import read_requests

    base = (Path(__file__).resolve().parents[2] / "examples/edits.jsonl").read_bytes()
    results = mutated_outcomes(tmp_path_factory.mktemp("edits") / "edits.jsonl", base, read_requests)
    assert len(results) >= 50 and "refused" in results


def test_python_tags_in_a_config_construct_nothing(tmp_path):
    """`!!python/...` tags (which the mutations above insert) are refused by the safe loader, as ConfigError."""
    from mmadapt.run_config import load_run

    marker = tmp_path / "pwned"
    path = tmp_path / "run.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(MMAdaptError, match="run.yaml"):
        load_run(path)
    assert not marker.exists()
