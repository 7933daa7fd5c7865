"""Helpers for the retrieval and model-attachment tests: the vector backends to run on, a corpus where dense and
lexical retrieval each miss something, a tiny cross-encoder built offline, and tiny (multimodal) language models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest


def has_milvus() -> bool:
    return importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None


# The vector backends every store-level test runs on: faiss files, and Milvus (milvus-lite, the Milvus engine
# in-process; `pip install -e ".[dev]"` brings it).
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skipif(not has_milvus(), reason="needs pymilvus + milvus-lite"))]

# Paraphrased queries share no word with any passage: only a dense retriever can find their passage.
TOPICS = [
    ("music", "The violin has four strings tuned in fifths and is played with a bow.", "which fiddle uses horsehair"),
    ("space", "Jupiter is the largest planet of the solar system, a giant made of gas.", "biggest world orbiting our sun"),
    ("medicine", "Insulin is a hormone from the pancreas that lowers blood sugar.", "what controls glucose levels"),
    ("cooking", "To bake sourdough bread, let the dough rise overnight and bake it in a hot oven.",
     "how do I make my own loaf"),
    ("geology", "A volcano erupts when molten rock rises through the crust and pours out as lava.",
     "mountain spewing magma"),
]
# Fault codes that differ only in digit order: their passages look alike to MiniLM, a lexical match tells them apart.
CODES = [("QX7731", "replace the fuel pump relay"), ("QX7713", "recalibrate the coolant sensor"),
         ("QX1377", "reset the tyre pressure monitor"), ("QX3177", "charge the battery"),
         ("QX7137", "clean the air filter"), ("QX1773", "tighten the fuel cap")]


def corpus_documents() -> list[Any]:
    """Topic passages (`topic-N`, metadata topic and year 2000+N) then fault-code passages (`code-CODE`, topic car)."""
    from mmadapt.rag.chunk import Document, sha256_text

    docs = [Document(f"notes/{topic}.txt", text, f"topic-{i}", None, "text", {"topic": topic, "year": 2000 + i},
                     sha256_text(text)) for i, (topic, text, _) in enumerate(TOPICS)]
    for code, fix in CODES:
        text = f"Fault {code}: {fix}."
        docs.append(Document("manual.txt", text, f"code-{code}", None, "text", {"topic": "car", "year": 2020},
                             sha256_text(text)))
    return docs


def topic_queries() -> tuple[list[str], list[str]]:
    """(paraphrased queries, the chunk id answering each)."""
    return [q for _, _, q in TOPICS], [f"topic-{i}#0" for i in range(len(TOPICS))]


def code_queries() -> tuple[list[str], list[str]]:
    """(bare fault codes, the chunk id answering each)."""
    return [code for code, _ in CODES], [f"code-{code}#0" for code, _ in CODES]


def make_cross_encoder(path: Path) -> Path:
    """A random 1-layer BERT cross-encoder (one relevance logit) with MiniLM's tokenizer, saved for
    `sentence_transformers.CrossEncoder(path)`. A wide init spreads its scores so their order is unambiguous."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from mmadapt.rag.embed import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1, initializer_range=1.0)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_lm(texts: list[str], directory: Path, image: bool = False, seed: int = 0) -> Any:
    """A random 1-layer llama MultimodalLM (hidden 32) whose word tokenizer covers `texts`; with a tiny ViT
    image encoder and MLP connector when `image`."""
    import torch

    from tests.tiny import build_model, model_spec, word_tokenizer

    spec = model_spec(word_tokenizer(directory, texts), image, heads=2, image_size=16, connector={"name": "mlp"})
    torch.manual_seed(seed)
    return build_model(spec)


def prompt_passages(prompt: str) -> list[str]:
    """The passage texts of a user turn laid out by the default PromptConfig (`[n] text` lines), in order."""
    import re

    return [m.group(2) for m in re.finditer(r"^\[(\d+)\] (.*)$", prompt, re.M)]
