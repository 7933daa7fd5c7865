"""Feature cache for frozen encoders: encode each media item once, reuse the features across epochs and stages.

Layout: `DIR/<encoder key[:20]>/manifest.json` (the encoder's identity) and
`DIR/<encoder key[:20]>/items/<h[:2]>/<h>.safetensors` (one item's features `[N, D]`).

- The encoder key hashes the encoder's class, config, preprocessing (its `preprocess_fingerprint()`
  if it has one, else the repr of its transform / processor), every weight and buffer in its state
  dict, and the torch / transformers / mmadapt versions. Change any of them and the key changes, so
  stale features are never read (they stay on disk under the old key until the folder is deleted).
- An item's key hashes the encoder key and the item's bytes: for a file, its contents (hashed
  once per process per path, size and mtime, so an edited file is re-read and re-encoded);
  in-memory items (bytes, arrays, PIL images) hash their data.
- Features are computed with the encoder in eval mode under `torch.no_grad()`; the cache refuses an
  encoder that has trainable parameters (its features would go stale as it trains).
- Every entry is written atomically, so concurrent processes (DDP ranks) may share a directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from mmadapt import __version__
from mmadapt.errors import ConfigError
from mmadapt.io import atomic_directory, atomic_write_bytes, sha256_file
from mmadapt.lineage import write_manifest

logger = logging.getLogger(__name__)
KEY_CHARS = 20  # hex characters of the encoder key used as the folder name (80 bits)


def preprocessing_description(encoder: nn.Module) -> Any:
    """What decides `encoder.preprocess`'s output besides its config: its own fingerprint, else its transform's repr."""
    fingerprint = getattr(encoder, "preprocess_fingerprint", None)
    if callable(fingerprint):
        return fingerprint()
    parts = {}
    for attr in ("transform", "processor", "image_processor", "feature_extractor"):
        value = getattr(encoder, attr, None)
        if value is not None:
            parts[attr] = value.to_dict() if hasattr(value, "to_dict") else repr(value)
    return parts


def _jsonable_config(encoder: nn.Module) -> Any:
    config = getattr(encoder, "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (bf16 included), on the CPU."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's class, config, preprocessing, weights and the library versions."""
    import transformers

    digest = hashlib.sha256()
    identity = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "config": _jsonable_config(encoder),
        "preprocessing": preprocessing_description(encoder),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "mmadapt": __version__},
    }
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def _hash_value(digest: "hashlib._Hash", value: Any) -> bool:
    """Feed an in-memory item into `digest`; False when the item's type cannot be hashed reliably."""
    import numpy as np

    if isinstance(value, (bytes, bytearray)):
        digest.update(b"bytes:" + bytes(value))
    elif isinstance(value, np.ndarray):
        digest.update(f"array:{value.dtype}:{value.shape}:".encode() + np.ascontiguousarray(value).tobytes())
    elif isinstance(value, torch.Tensor):
        digest.update(f"tensor:{value.dtype}:{tuple(value.shape)}:".encode() + tensor_bytes(value))
    elif isinstance(value, (int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq:{len(value)}:".encode())
        return all(_hash_value(digest, v) for v in value)
    elif isinstance(value, dict):
        digest.update(f"dict:{sorted(value)}:".encode())
        return all(_hash_value(digest, value[k]) for k in sorted(value))
    elif hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        digest.update(f"image:{value.mode}:{value.size}:".encode() + value.tobytes())
    else:
        return False
    return True


class FeatureCache:
    """`get(raw_items) -> Tensor[n, N, D]` (CPU): cached features of a frozen encoder, computing the misses.

    `encoder_key` defaults to `encoder_fingerprint(encoder)`; pass one only when it is known to
    identify the encoder's weights and preprocessing (e.g. computed once and shared by workers).
    """

    def __init__(self, directory: str | Path, encoder: nn.Module, encoder_key: str | None = None, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.key = encoder_key or encoder_fingerprint(encoder)
        self.root = Path(directory) / self.key[:KEY_CHARS]
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0
        self._file_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> content SHA-256
        self._ensure_root()

    # ------------------------------------------------------------------ layout
    def _ensure_root(self) -> None:
        """Create the key folder with its manifest once (atomically; another process may win the race)."""
        if (self.root / "manifest.json").is_file():
            return

        description = {
            "encoder_key": self.key,
            "encoder_class": f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}",
            "encoder_config": _jsonable_config(self.encoder),
            "preprocessing": preprocessing_description(self.encoder),
        }
        try:
            with atomic_directory(self.root, overwrite=False) as tmp:
                (tmp / "items").mkdir()
                write_manifest(tmp, "feature_cache", config=json.loads(json.dumps(description, default=str)), final_path=self.root)
        except (FileExistsError, OSError):
            if not (self.root / "manifest.json").is_file():
                raise

    def entry_path(self, item_key: str) -> Path:
        return self.root / "items" / item_key[:2] / f"{item_key}.safetensors"

    def item_key(self, raw: Any) -> str | None:
        """The cache key of one raw item; None when it cannot be keyed (a missing file: preprocess reports it)."""
        digest = hashlib.sha256(self.key.encode())
        if isinstance(raw, (str, os.PathLike)):
            content = self._file_digest(Path(raw))
            if content is None:
                return None
            digest.update(b"file:" + content.encode())
        elif not _hash_value(digest, raw):
            return None
        return digest.hexdigest()

    def _file_digest(self, path: Path) -> str | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in self._file_digests:
            self._file_digests[memo] = sha256_file(path)
        return self._file_digests[memo]

    # ------------------------------------------------------------------ reading and writing
    def _load(self, item_key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self.entry_path(item_key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception as e:  # a damaged entry is recomputed, never trusted
            logger.warning("feature cache entry %s is unreadable (%s); recomputing it", path, e)
            return None

    def _store(self, item_key: str, features: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write_bytes(self.entry_path(item_key), save({"features": features.detach().cpu().contiguous()}))

    def _check_frozen(self) -> None:
        trainable = [n for n, p in self.encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise ConfigError(
                f"feature cache: the {getattr(self.encoder, 'modality', '')} encoder has {len(trainable)} trainable "
                f"parameters (e.g. {trainable[0]}); cached features would go stale while it trains. Freeze it "
                "(leave it out of training.train_modules) or turn the feature cache off"
            )

    @torch.no_grad()
    def _encode(self, items: Sequence[Any]) -> torch.Tensor:
        """Preprocess and encode items with the encoder in eval mode (restored afterwards) -> CPU `[n, N, D]`."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            param = next(self.encoder.parameters(), None)
            batch = torch.stack([self.encoder.preprocess(item) for item in items])
            if param is not None:
                batch = batch.to(device=param.device, dtype=param.dtype if batch.is_floating_point() else batch.dtype)
            return self.encoder(batch).cpu()
        finally:
            self.encoder.train(was_training)

    def get(self, raw_items: Sequence[Any]) -> torch.Tensor:
        """Features of `raw_items` as one CPU tensor `[n, N, D]`, in order; misses are encoded and stored."""
        self._check_frozen()
        keys = [self.item_key(raw) for raw in raw_items]
        found: list[torch.Tensor | None] = [self._load(k) if k else None for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(raw_items) - len(missing)
        self.misses += len(missing)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            features = self._encode([raw_items[i] for i in chunk])
            for i, feature in zip(chunk, features):
                found[i] = feature.clone()  # clone: a row view would save the whole batch's storage
                if keys[i] is not None:
                    self._store(keys[i], found[i])
        return torch.stack(found)  # n x [N, D] -> [n, N, D]

    def warm(self, raw_items: Iterable[Any], desc: str = "feature cache") -> int:
        """Encode every not-yet-cached item up front (with a progress bar); returns how many were encoded."""
        from tqdm.auto import tqdm

        self._check_frozen()
        todo, seen = [], set()
        for raw in raw_items:
            key = self.item_key(raw)
            if key is None or key in seen or self.entry_path(key).is_file():
                continue
            seen.add(key)
            todo.append(raw)
        for start in tqdm(range(0, len(todo), self.batch_size), desc=desc, disable=not todo):
            chunk = todo[start:start + self.batch_size]
            for raw, feature in zip(chunk, self._encode(chunk)):
                self._store(self.item_key(raw), feature.clone())
        self.misses += len(todo)
        return len(todo)
