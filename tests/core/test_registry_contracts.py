"""One contract per registry kind, over every registered name: a new kind without a contract, or a new entry that
breaks its kind's contract, fails here (the deeper per-kind suites live beside each part)."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
import torch

from mmadapt import registry
from mmadapt.data.formats.base import Context, RecordFormat
from mmadapt.merge.methods import MergeMethod, MergeParams

TESTS = Path(__file__).resolve().parents[1]
TINY_CONNECTORS = {  # a registered connector absent here is built with its defaults
    "qformer": {"num_query_tokens": 6, "num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
    "resampler": {"num_latents": 6, "depth": 1, "hidden_size": 32, "num_heads": 4, "head_dim": 8, "num_kv_heads": 2},
}
SAMPLES = {  # one tiny conversation record per data format, as users write it
    "llava": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "openai": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    "alpaca": {"instruction": "hi", "input": "", "output": "hello"},
}


def _cases_of(test_file: str, attr: str) -> list:
    folder = str((TESTS / test_file).parent)
    if folder not in sys.path:  # the suite's own helper modules import each other by bare name, as pytest runs them
        sys.path.insert(0, folder)
    return getattr(importlib.import_module(Path(test_file).stem), attr)


def connector(name: str) -> None:
    part = registry.build("connector", {"name": name, **TINY_CONNECTORS.get(name, {})}, in_dim=24, out_dim=40)
    features = torch.randn(2, 16, 24, requires_grad=True)
    out = part(features)
    assert out.shape == (2, part.num_tokens(16), 40) and out.dtype == features.dtype and out.isfinite().all()
    out.square().mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def merge_method(name: str) -> None:
    method = registry.resolve("merge_method", name)
    assert isinstance(method, MergeMethod) and method.name == name
    weight = torch.randn(8, 4)
    n = method.num_models or 2
    params = MergeParams(weights=[1.0 / n] * n, densities=[1.0] * n)
    merged = method(weight.clone() if method.needs_base else None, [weight.clone() for _ in range(n)], params)
    torch.testing.assert_close(merged, weight, rtol=0, atol=1e-5)  # merging identical models returns the model


def data_format(name: str) -> None:
    fmt = registry.resolve("data_format", name)
    assert isinstance(fmt, RecordFormat) and fmt.name == name
    assert name in SAMPLES, f"add a tiny sample of the {name} layout to SAMPLES"
    sample = SAMPLES[name]
    assert fmt.detect(sample)
    record = fmt.read(sample, "conversation", Context(where=f"{name}:1", root=Path("."), cache=Path(".")))
    assert record  # the internal record the trainer reads


def covered_by(test_file: str, attr: str, key):
    def check(name: str) -> None:
        assert any(key(case) == name for case in _cases_of(test_file, attr)), f"{name}: no case in {test_file}:{attr}"
    return check


def edit_method(name: str) -> None:
    apply = registry.resolve("edit_method", name)
    assert callable(apply) and dataclasses.is_dataclass(apply.hparams_class)
    assert dataclasses.is_dataclass(apply.hparams_class())  # every hyper-parameter has a default


def objective(name: str) -> None:
    part = registry.build("objective", {"name": name})
    assert dataclasses.is_dataclass(part.config_class) and part.data_formats and callable(part.loss)


def callable_entry(kind: str):
    def check(name: str) -> None:
        assert callable(registry.resolve(kind, name))
    return check


CONTRACTS = {
    "connector": connector,
    "merge_method": merge_method,
    "data_format": data_format,
    "edit_method": edit_method,
    "objective": objective,
    # encoders: tests/encoders/test_encoder_contract.py runs the feature-shape contract over encoder_cases.TEST_CASES;
    # here: every registered encoder has a case there
    "encoder": covered_by("encoders/encoder_cases.py", "TEST_CASES", lambda case: case.name),
    "quickstart": callable_entry("quickstart"),
    "eval_task": callable_entry("eval_task"),
    "dataset_generator": callable_entry("dataset_generator"),
}


def test_every_registry_kind_has_a_contract():
    assert set(registry.REGISTRY) == set(CONTRACTS)


@pytest.mark.parametrize("kind, name", [(k, n) for k in registry.REGISTRY for n in registry.names(k)])
def test_registered_entry_meets_its_kind_contract(kind, name):
    CONTRACTS[kind](name)


def test_readme_example_part_meets_the_contract(tmp_path, monkeypatch):
    """The README's "How to add a part" example, written to a module and registered, passes its kind's contract;
    a broken variant fails it."""
    import re

    readme = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## How to add a part"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "readme_part.py").write_text(code)
    broken = code.replace(".mean(0)", ".mean(0) * 2").replace('MergeMethod("mean"', 'MergeMethod("broken"')
    (tmp_path / "readme_broken.py").write_text(broken)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "merge_method", {**registry.REGISTRY["merge_method"],
                                                            "mean": "readme_part:mean", "broken": "readme_broken:mean"})
    line = re.search(r'`"mean": "([\w.]+):mean",`', section)
    assert line and line.group(1) == "mmadapt.merge.mean"  # the README shows the registry line it documents
    merge_method("mean")
    with pytest.raises(AssertionError, match="Mismatched elements"):  # the formula, not the name, fails
        merge_method("broken")
