"""Every registered part conforms to its declared protocol in mmadapt.interfaces (no member found by hasattr alone)."""

from __future__ import annotations

import inspect

import pytest

from mmadapt import registry
from mmadapt.data.loading import FORMATS
from mmadapt.interfaces import EditMethod, Objective, PreparedObjective


@pytest.mark.parametrize("name", registry.names("edit_method"))
def test_edit_methods_share_one_signature(name):
    method = registry.resolve("edit_method", name)
    assert isinstance(method, EditMethod)
    expected = list(inspect.signature(EditMethod.__call__).parameters)[1:]  # without self
    assert list(inspect.signature(method).parameters) == expected


@pytest.mark.parametrize("name", registry.names("objective"))
def test_objectives_declare_their_data_formats(name):
    cls = registry.resolve("objective", name)
    objective = cls(cls.config_class())
    assert isinstance(objective, Objective)
    assert objective.data_formats and set(objective.data_formats) <= set(FORMATS)
    if hasattr(cls, "prepare"):  # a reference model to set up: it takes the run's collator, never builds its own
        assert isinstance(objective, PreparedObjective)
        assert list(inspect.signature(cls.prepare).parameters) == ["self", "model", "records", "collator"]
