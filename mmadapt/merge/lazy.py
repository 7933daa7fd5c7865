"""Out-of-core safetensors: read one tensor at a time from (sharded) files, write shards as tensors arrive.

`TensorSource` knows every tensor's shape and dtype from the file headers alone and reads a tensor
only when asked (opening its shard for that read, so no mapping of a whole shard stays resident).
`ShardedWriter` plans the output shards from the known shapes up front, writes each shard's
header first, then appends every tensor's bytes the moment it is merged: peak memory is the few
tensors of one name, whatever the model or shard size. The format (8-byte little-endian header
length, JSON header with data offsets, raw bytes) is the published safetensors layout; files are
read back with the safetensors library.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open

from mmadapt.errors import DataError
from mmadapt.io import atomic_write_json, contained_path, read_json

INDEX_SUFFIX = ".safetensors.index.json"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class TensorSource:
    """The tensors of one safetensors file or sharded set, read lazily by name."""

    def __init__(self, files: Iterable[Path], label: str) -> None:
        self.label = label  # names the model in errors
        self.files = sorted(Path(f) for f in files)
        self.location: dict[str, Path] = {}
        self.info: dict[str, TensorInfo] = {}
        for path in self.files:
            try:
                with safe_open(str(path), framework="pt") as f:
                    for name in f.keys():
                        if name in self.location:
                            raise DataError(f"{label}: tensor {name} appears in both {self.location[name].name} and {path.name}")
                        piece = f.get_slice(name)
                        dtype = piece.get_dtype()
                        if dtype not in DTYPES:
                            raise DataError(f"{label}: tensor {name} in {path.name} has unsupported dtype {dtype}; "
                                            f"supported: {', '.join(DTYPES)}")
                        self.location[name] = path
                        self.info[name] = TensorInfo(name, DTYPES[dtype], tuple(piece.get_shape()))
            except (OSError, SafetensorError) as e:  # truncated or foreign files
                raise DataError(f"{label}: cannot read {path}: {e}") from e

    @classmethod
    def from_dir(cls, directory: str | Path, label: str, basename: str = "model") -> "TensorSource":
        """`basename.safetensors`, or the shards listed in `basename.safetensors.index.json`."""
        directory = Path(directory)
        index = directory / f"{basename}{INDEX_SUFFIX}"
        if index.is_file():
            weight_map = read_index(index, label)
            files = sorted({directory / f for f in weight_map.values()})
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise DataError(f"{label}: {index.name} lists shards that do not exist: {', '.join(missing)}")
            source = cls(files, label)
            unlisted = set(source.location) - set(weight_map)
            if unlisted:
                raise DataError(f"{label}: tensors {sorted(unlisted)[:3]} are in the shards but not in {index.name}")
            return source
        single = directory / f"{basename}.safetensors"
        if single.is_file():
            return cls([single], label)
        if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
            raise DataError(f"{label}: {directory} holds only pickle weights (.bin/.pt); mmadapt merges safetensors: "
                            f"re-save with save_pretrained(..., safe_serialization=True)")
        raise DataError(f"{label}: no {basename}.safetensors or {basename}{INDEX_SUFFIX} in {directory}")

    def names(self) -> list[str]:
        return list(self.info)

    def __contains__(self, name: str) -> bool:
        return name in self.info

    def get(self, name: str) -> torch.Tensor:
        if name not in self.location:
            raise DataError(f"{self.label}: no tensor {name}")
        with safe_open(str(self.location[name]), framework="pt") as f:
            return f.get_tensor(name)


def read_index(index: Path, label: str) -> dict[str, str]:
    """The weight_map of a `*.safetensors.index.json`, every shard name checked to stay inside its folder
    (an absolute or `../` name would otherwise be read from anywhere on the machine)."""
    weight_map = read_json(index, f"{label}: a safetensors index", DataError, expect=dict).get("weight_map")
    if not isinstance(weight_map, dict):
        raise DataError(f"{label}: {index}: weight_map must map tensor names to shard file names")
    for name, shard in weight_map.items():
        contained_path(index.parent, shard, f"{index}: weight_map[{name!r}]", DataError)
        if not str(shard).endswith(".safetensors"):
            raise DataError(f"{label}: {index}: weight_map[{name!r}] = {shard!r} is not a .safetensors file")
    return weight_map


def check_index(directory: str | Path) -> None:
    """Check the shard names of every safetensors index in `directory` (before a loader follows them)."""
    for index in sorted(Path(directory).glob(f"*{INDEX_SUFFIX}")):
        read_index(index, str(directory))


def plan_shards(infos: list[TensorInfo], max_shard_bytes: int) -> list[list[TensorInfo]]:
    """Split tensors (in order) into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for info in infos:
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(info)
        size += info.nbytes
    return shards if shards[0] else []


def _header(shard: list[TensorInfo], metadata: dict[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for info in shard:
        entries[info.name] = {"dtype": DTYPE_NAMES[info.dtype], "shape": list(info.shape),
                              "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


class ShardedWriter:
    """Writes planned tensors, in plan order, into `basename.safetensors` or `basename-0000i-of-0000n` shards.

    Use as a context manager inside an atomic output directory; leaving it checks every planned
    tensor was written and writes the index json when there is more than one shard.
    """

    def __init__(self, directory: str | Path, infos: list[TensorInfo], basename: str = "model",
                 max_shard_bytes: int = 5 * 1024**3, metadata: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.basename = basename
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(list(infos), max_shard_bytes)
        n = len(self.shards)
        self.filenames = ([f"{basename}.safetensors"] if n == 1 else
                          [f"{basename}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self.order = [(s, info) for s, shard in enumerate(self.shards) for info in shard]
        self.position = 0
        self._file = None
        self._shard = -1

    def __enter__(self) -> "ShardedWriter":
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self.position >= len(self.order):
            raise RuntimeError(f"{name}: every planned tensor has been written already")
        shard, info = self.order[self.position]
        if name != info.name:
            raise RuntimeError(f"tensors must arrive in plan order: expected {info.name}, got {name}")
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise RuntimeError(f"{name}: planned {info.dtype} {list(info.shape)}, got {tensor.dtype} {list(tensor.shape)}")
        if shard != self._shard:
            self._open(shard)
        if tensor.numel():
            # [*shape] -> flat bytes, little-endian as safetensors requires (torch is on every supported host)
            data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
            self._file.write(memoryview(data.numpy()))
        self.position += 1

    def _open(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.directory / self.filenames[shard], "wb")
        self._file.write(_header(self.shards[shard], self.metadata))
        self._shard = shard

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if exc_type is not None:
            return
        if self.position != len(self.order):
            raise RuntimeError(f"only {self.position} of {len(self.order)} planned tensors were written")
        if len(self.shards) > 1:
            weight_map = {info.name: self.filenames[s] for s, info in self.order}
            total = sum(info.nbytes for _, info in self.order)
            atomic_write_json(self.directory / f"{self.basename}{INDEX_SUFFIX}",
                              {"metadata": {"total_size": total}, "weight_map": weight_map})


def load_dir(directory: str | Path, basename: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) model directory in memory: the in-memory reference path."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in TensorSource.from_dir(directory, str(directory), basename).files:
        state.update(load_file(str(path)))
    return state
