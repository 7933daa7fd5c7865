"""Test-wide settings: offline hubs, few threads, deterministic seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models gain nothing from a second thread; two spin against each other


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


VOCAB_TEXT = [
    "what colour is the shape ? which shape is in the image ? where is it ? how many shapes are there ?",
    "red green blue yellow circle square triangle one two three top bottom left right",
    "the quick brown fox jumps over the lazy dog . hello world , you are a helpful assistant",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A word-level tokenizer (ChatML template) saved to disk, built offline."""
    from tests.tiny import word_tokenizer

    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"), VOCAB_TEXT, ("<image>", "<audio>", "<video>"))


@pytest.fixture
def make_model_config(tokenizer_dir):
    """Build a ModelConfig for a tiny LLM of `model_type`, with (optionally) a tiny ViT + connector."""
    from tests.tiny import model_config, model_spec

    def make(model_type: str = "llama", image: bool = True, connector: dict | None = None, hidden: int = 32):
        return model_config(model_spec(tokenizer_dir, image, model_type, hidden=hidden, layers=2, heads=2, image_size=16,
                                       connector=connector or {"name": "mlp", "depth": 2}))

    return make


@pytest.fixture
def image_files(tmp_path):
    """A few small PNG images of solid colours."""
    from PIL import Image

    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (16, 16), colour).save(path)
        paths.append(path)
    return paths
