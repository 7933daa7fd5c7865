"""A test harness that runs the real FSDP2 engine on CPU ranks (gloo).

accelerate keeps its FSDP plugin only for accelerator device types: `AcceleratorState.__init__` lists them
(MULTI_GPU, MULTI_NPU, ...) and leaves MULTI_CPU out, so a CPU launch trains plain DDP, and mmadapt refuses
`strategy: fsdp` there. torch's FSDP2 itself shards over gloo on CPU. For the tests only, this writes a copy of the
installed accelerate with MULTI_CPU added to that one list, and a `sitecustomize` that lets mmadapt's early CPU
refusal pass; launched ranks put the folder first on PYTHONPATH. Everything else is the real stack.
"""

from __future__ import annotations

import shutil
from pathlib import Path

GATE = """            elif self.distributed_type in [
                DistributedType.MULTI_GPU,"""

SITECUSTOMIZE = '''"""Test harness (tests/train/fsdp_cpu.py): mmadapt's refusal of FSDP on CPU is lifted in these ranks."""
import torch

import mmadapt.train.distributed as _distributed

_check = _distributed.check_distributed


def check_distributed(config):
    available = torch.accelerator.is_available
    torch.accelerator.is_available = lambda: True  # the patched accelerate beside this file shards on CPU
    try:
        return _check(config)
    finally:
        torch.accelerator.is_available = available


_distributed.check_distributed = check_distributed
'''


def cpu_fsdp_pythonpath(folder: Path) -> Path | None:
    """Write the harness into `folder`; None when this accelerate's source no longer has the gate it patches."""
    import accelerate

    source = Path(accelerate.__file__).parent
    state = (source / "state.py").read_text(encoding="utf-8")
    if GATE not in state:
        return None
    shutil.copytree(source, folder / "accelerate")
    patched = state.replace(GATE, GATE.replace("[\n", "[\n                DistributedType.MULTI_CPU,\n", 1), 1)
    (folder / "accelerate" / "state.py").write_text(patched, encoding="utf-8")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return folder
