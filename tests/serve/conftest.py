"""Serve fixtures: a tiny image+audio MultimodalLM checkpoint, a plain HF causal LM directory, a MiniLM index,
and uvicorn servers started in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

WORDS = ["hello world the quick brown fox jumps over the lazy dog . which planet is the biggest ? how do I bake bread",
         "red green blue yellow circle square one two three top bottom left right what colour is it"]
AUDIO = {"name": "tiny_audio", "width": 32, "depth": 1, "heads": 2, "n_mels": 16, "window_seconds": 0.5}
PASSAGES = [("corpus/astronomy.txt", "Jupiter is the largest planet in the solar system."),
            ("corpus/baking.txt", "To bake sourdough bread, let the dough rise overnight and bake it in a hot oven."),
            ("corpus/music.txt", "The violin has four strings and is played with a bow.")]


def no_eos(model: Any) -> None:
    """Random tiny models often pick EOS first; suppressing it makes answers run to max_tokens or a stop string."""
    model.generation_config.suppress_tokens = [model.generation_config.eos_token_id or model.config.eos_token_id]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A 1-layer llama (hidden 32) MultimodalLM with a tiny ViT image encoder and a tiny audio encoder."""
    import torch

    from tests.tiny import build_model, model_spec, word_tokenizer

    root = tmp_path_factory.mktemp("serve-model")
    tokenizer = word_tokenizer(root / "tokenizer", WORDS, ("<image>", "<audio>"))
    spec = model_spec(tokenizer, image=True, heads=2, max_positions=256, image_size=16, connector={"name": "mlp"})
    spec["encoders"]["audio"], spec["connectors"]["audio"] = AUDIO, {"name": "mlp"}
    torch.manual_seed(0)
    model = build_model(spec)
    model.llm.generation_config.eos_token_id = model.tokenizer.eos_token_id
    no_eos(model.llm)
    return model.save_pretrained(root / "tiny-vlm")


@pytest.fixture(scope="session")
def plain_lm_dir(tmp_path_factory) -> Path:
    """A plain Hugging Face llama directory (config.json, safetensors, tokenizer), no mmadapt files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer

    root = tmp_path_factory.mktemp("plain-lm")
    train_word_tokenizer(WORDS, root / "tok")
    tokenizer = AutoTokenizer.from_pretrained(root / "tok")
    spec = tiny_llm_config("llama", vocab_size=len(tokenizer), hidden=32, layers=1, heads=2, max_positions=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    no_eos(model)
    model.save_pretrained(root / "plain", safe_serialization=True)
    tokenizer.save_pretrained(root / "plain")
    return root / "plain"


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory) -> Path:
    """A flat MiniLM index of three one-passage documents (chunk ids doc-N#0)."""
    from mmadapt.rag.chunk import Document, sha256_text
    from mmadapt.rag.store import RagConfig, RagIndex

    docs = [Document(src, text, f"doc-{i}", None, "text", {}, sha256_text(text)) for i, (src, text) in enumerate(PASSAGES)]
    path = tmp_path_factory.mktemp("serve-rag") / "index"
    RagIndex.build(path, docs, RagConfig())
    return path


@pytest.fixture(scope="session")
def engine(model_dir, index_dir):
    from mmadapt.serve import ChatEngine, EngineConfig

    engine = ChatEngine.from_directory(model_dir, index=index_dir, config=EngineConfig(max_tokens_limit=64))
    yield engine
    engine.close()


class Server:
    """uvicorn serving an ASGI app in a thread, on a port the OS picked."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


@pytest.fixture(scope="session")
def server(engine) -> Iterator[Server]:
    from mmadapt.serve.app import create_app

    with Server(create_app(engine)) as running:
        yield running


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
