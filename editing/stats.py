"""Second-moment statistics C = E[k kᵀ] of an MLP projection's inputs over a text corpus, cached on disk.

The cache key is (model fingerprint, module name, corpus fingerprint): the corpus file's SHA-256,
the tokenizer's vocabulary and the sampling limits. A `StatsCache` object also keeps loaded
matrices in memory, keyed the same way, so repeated edits in one process read the disk once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mmadapt.errors import ConfigError, DataError
from mmadapt.hooks import TraceDict
from mmadapt.io import atomic_write_bytes, read_json_items, read_utf8, sha256_file

logger = logging.getLogger(__name__)


@dataclass
class StatsConfig:
    """Where C comes from: a text corpus (.txt: one text per line; .jsonl / .json: objects with "text")."""

    corpus: str | None = None
    max_texts: int = 20000
    max_tokens: int = 200_000  # stop after this many token positions
    max_length: int = 128  # tokens per text
    batch_size: int = 8
    cache_dir: str | None = None  # default: $MMADAPT_CACHE/edit_stats or ~/.cache/mmadapt/edit_stats

    def __post_init__(self) -> None:
        for key in ("max_texts", "max_tokens", "max_length", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"stats.{key} must be >= 1, got {getattr(self, key)}")


def default_cache_dir() -> Path:
    root = os.environ.get("MMADAPT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "mmadapt") / "edit_stats"


def read_corpus(path: str | Path, max_texts: int) -> list[str]:
    """Texts of a corpus file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"stats corpus {path} does not exist (a .txt with one text per line, or .jsonl/.json with 'text')")
    texts: list[str] = []
    if path.suffix in (".json", ".jsonl"):
        items = read_json_items(path, "a stats corpus", DataError)
    else:
        text = read_utf8(path, "a stats corpus", DataError)
        items = [(f"{path}:{i}", line) for i, line in enumerate(text.splitlines(), start=1)]
    for where, item in items:
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise DataError(f"{where}: expected a string or an object with a 'text' string")
        if text.strip():
            texts.append(text)
        if len(texts) >= max_texts:
            break
    if not texts:
        raise DataError(f"stats corpus {path} holds no text")
    return texts


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes (an edited model gets a new fingerprint)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        tensor = param.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tok) -> str:
    vocab = sorted(tok.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def corpus_fingerprint(tok, config: StatsConfig) -> str:
    if config.corpus is None:
        raise ConfigError("stats.corpus: no corpus for the second-moment statistics; set it to a text file "
                          "(.txt one text per line, or .jsonl with 'text'), or set mom2: false")
    parts = [sha256_file(config.corpus) if Path(config.corpus).is_file() else "missing", tokenizer_fingerprint(tok),
             str(config.max_texts), str(config.max_tokens), str(config.max_length)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@torch.no_grad()
def accumulate_second_moments(model: nn.Module, tok, modules: list[str], texts: list[str], config: StatsConfig) -> dict[str, tuple[torch.Tensor, int]]:
    """Sum k kᵀ (float64) and the count of positions of each module's input, in one pass over `texts`."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    was_training = model.training
    model.eval()
    progress = tqdm(total=len(texts), desc="second moments", unit="text", leave=False)
    try:
        for start in range(0, len(texts), config.batch_size):
            batch = [tok(t, truncation=True, max_length=config.max_length)["input_ids"] for t in texts[start : start + config.batch_size]]
            batch = [ids for ids in batch if ids]
            if not batch:
                continue
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(batch):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            with TraceDict(model, modules, retain_input=True, retain_output=False) as traces:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            keep = mask.bool().to(device)
            for name in modules:
                keys = traces[name].input[keep].double()  # [positions, d_in]
                sums[name] = sums[name] + keys.T @ keys if name in sums else keys.T @ keys
            count += int(keep.sum())
            progress.update(len(batch))
            if count >= config.max_tokens:
                break
    finally:
        progress.close()
        model.train(was_training)
    return {name: (value, count) for name, value in sums.items()}


class StatsCache:
    """C = E[k kᵀ] per (model, module, corpus), computed once and reused from `directory` and from memory."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._memory: dict[tuple[str, str, str], torch.Tensor] = {}
        self.computed = 0  # modules whose statistics this object computed (not found cached)
        self.loaded = 0  # modules read from disk

    def path(self, model_id: str, module: str, corpus_id: str) -> Path:
        return self.directory / f"{model_id[:16]}-{module}-{corpus_id[:16]}.safetensors"

    def second_moments(self, model: nn.Module, tok, modules: list[str], config: StatsConfig,
                       model_id: str | None = None) -> dict[str, torch.Tensor]:
        """{module: C[d_in, d_in] float32}; `model_id` defaults to the fingerprint of the model's weights."""
        from safetensors.torch import load_file, save

        model_id = model_id or model_fingerprint(model)
        corpus_id = corpus_fingerprint(tok, config)
        result: dict[str, torch.Tensor] = {}
        missing = []
        for module in modules:
            key = (model_id, module, corpus_id)
            path = self.path(*key)
            if key in self._memory:
                result[module] = self._memory[key]
            elif path.is_file():
                result[module] = self._memory[key] = load_file(str(path))["mom2"]
                self.loaded += 1
                logger.info("second moments of %s loaded from %s", module, path)
            else:
                missing.append(module)
        if missing:
            texts = read_corpus(config.corpus, config.max_texts)
            logger.info("computing second moments of %s over %s (%d texts)", ", ".join(missing), config.corpus, len(texts))
            for module, (total, count) in accumulate_second_moments(model, tok, missing, texts, config).items():
                mom2 = (total / max(count, 1)).float().cpu()
                key = (model_id, module, corpus_id)
                metadata = {"model_id": model_id, "module": module, "corpus": str(config.corpus), "corpus_id": corpus_id,
                            "positions": str(count)}
                atomic_write_bytes(self.path(*key), save({"mom2": mom2.contiguous()}, metadata=metadata))
                result[module] = self._memory[key] = mom2
                self.computed += 1
        return result
