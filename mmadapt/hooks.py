"""Trace / TraceDict: context managers that capture (and optionally edit) named modules' inputs/outputs."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise KeyError(f"module {name!r} not found in {type(model).__name__}") from e


class Trace:
    """`with Trace(model, "transformer.h.3.mlp.c_proj", retain_input=True) as t: model(x)`; then `t.input`, `t.output`.

    `edit_output(output, layer_name) -> output` may replace the module's output (used by causal
    tracing and ROME's value optimisation).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        retain_output: bool = True,
        retain_input: bool = False,
        detach: bool = True,
        edit_output: Callable[[Any, str], Any] | None = None,
    ) -> None:
        self.layer = layer
        self.input: torch.Tensor | None = None
        self.output: Any = None
        module = get_module(model, layer)

        def hook(_module: nn.Module, inputs: tuple, output: Any) -> Any:
            if retain_input:
                first = inputs[0]
                self.input = first.detach() if detach else first
            if edit_output is not None:
                output = edit_output(output, layer)
            if retain_output:
                out = output[0] if isinstance(output, tuple) else output
                self.output = out.detach() if detach else out
            return output

        self._handle = module.register_forward_hook(hook)

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._handle.remove()


class TraceDict(dict):
    """Several Traces at once: `with TraceDict(model, names) as td: ...; td[name].output`."""

    def __init__(self, model: nn.Module, layers: Iterable[str], **kwargs: Any) -> None:
        super().__init__()
        for layer in layers:
            self[layer] = Trace(model, layer, **kwargs)

    def __enter__(self) -> "TraceDict":
        return self

    def __exit__(self, *exc: Any) -> None:
        for trace in self.values():
            trace.close()
