"""Embedders: the bundled MiniLM (identity, normalisation, batching, its token budget) and open_clip (text and
images in one space), and the identity check that keeps an index from mixing embedders."""

from __future__ import annotations

import numpy as np
import pytest

from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.embed import (
    DEFAULT_EMBEDDER, EmbedderConfig, check_identity, default_model_path, load_embedder,
)

SENTENCES = ["The cat sleeps on the mat.", "Stock markets fell sharply today.", "A kitten naps on a rug.",
             "Quarterly earnings beat expectations.", "Rain is expected tomorrow.", "Bring an umbrella."]


def test_minilm_identity_is_the_same_by_alias_hub_id_or_bundled_path(minilm):
    assert default_model_path() is not None and (default_model_path() / "config.json").is_file()
    assert minilm.identity == {"type": "sentence-transformers", "name": DEFAULT_EMBEDDER, "dim": 384}
    assert minilm.modalities == ("text",)
    by_path = load_embedder({"name": str(default_model_path())})
    assert by_path.identity == minilm.identity
    np.testing.assert_allclose(by_path.embed_documents(SENTENCES[:2]), minilm.embed_documents(SENTENCES[:2]), atol=1e-6)


def test_minilm_vectors_are_unit_norm_batch_independent_and_semantic(minilm):
    vectors = minilm.embed_documents(SENTENCES)
    assert vectors.shape == (6, 384) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    small_batches = load_embedder(EmbedderConfig(batch_size=2))
    np.testing.assert_allclose(small_batches.embed_documents(SENTENCES), vectors, atol=1e-5)
    sims = vectors @ vectors.T
    assert np.argsort(-sims[0])[1] == 2 and np.argsort(-sims[1])[1] == 3  # cat ~ kitten, markets ~ earnings
    query = minilm.embed_queries(["where is the feline resting"])
    assert query.shape == (1, 384) and int(np.argmax(vectors @ query[0])) in (0, 2)
    assert minilm.embed_documents([]).shape == (0, 384)


def test_minilm_shows_a_progress_bar_only_for_many_batches(capsys):
    one_by_one = load_embedder(EmbedderConfig(batch_size=1))
    one_by_one.embed_documents(SENTENCES[:5])  # 5 > 4 batches of 1
    assert "Batches" in capsys.readouterr().err
    one_by_one.embed_documents(SENTENCES[:2])
    assert "Batches" not in capsys.readouterr().err


def test_every_default_size_chunk_fits_the_models_window(minilm):
    """[CLS] and [SEP] count against max_seq_length: a chunk gets the rest, so no passage is silently truncated."""
    from mmadapt.rag.chunk import chunk_documents, Document

    tokenizer = minilm.model.tokenizer
    assert minilm.max_tokens == minilm.model.max_seq_length - 2
    text = " ".join(f"sentence number {i} mentions lighthouse{i % 7}keeping." for i in range(150))
    chunks = chunk_documents([Document("long.txt", text, "long")], minilm.token_spans, minilm.max_tokens, 32)
    assert len(chunks) >= 3
    assert max(len(tokenizer(c.text)["input_ids"]) for c in chunks) <= minilm.model.max_seq_length


def test_text_only_embedder_refuses_images_and_bad_names_are_config_errors(minilm, tmp_path):
    with pytest.raises(ConfigError, match="embeds text only; use embedder.type: open_clip"):
        minilm.embed_images([tmp_path / "x.png"])
    with pytest.raises(ConfigError, match=f"embedder.name '{tmp_path / 'nothing'}' cannot be loaded"):
        load_embedder({"name": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match="embedder.type"):
        load_embedder({"type": "word2vec"})
    with pytest.raises(ValueError, match="embedder.batch_size must be >= 1"):
        EmbedderConfig(batch_size=0)


def test_check_identity_names_both_embedders():
    built = {"type": "sentence-transformers", "name": DEFAULT_EMBEDDER, "dim": 384}
    check_identity(built, dict(built), "idx")
    with pytest.raises(DataError, match=r"idx: the index was built with embedder sentence-transformers "
                                        r"'sentence-transformers/all-MiniLM-L6-v2' \(dim 384\), but open_clip 'ViT' \(dim 32\)"):
        check_identity(built, {"type": "open_clip", "name": "ViT", "dim": 32}, "idx")


def test_open_clip_puts_colour_words_and_images_in_one_space(tiny_clip, tmp_path, capsys):
    clip = load_embedder({"type": "open_clip", "name": tiny_clip.name, "batch_size": 2})
    assert clip.identity == {"type": "open_clip", "name": tiny_clip.name, "dim": 32}
    assert clip.modalities == ("text", "image")
    colours = list(tiny_clip.colours)
    text = clip.embed_queries(colours)
    assert text.shape == (4, 32) and text.dtype == np.float32
    np.testing.assert_allclose(clip.embed_documents(colours), text)  # one text tower for passages and queries
    # unseen noisy images, as paths, bytes and PIL images: each is nearest its own colour word, and vice versa
    from PIL import Image

    paths = [tiny_clip.image(tmp_path, c, seed=1000) for c in colours]
    items = [paths[0], paths[1].read_bytes(), Image.open(paths[2]), str(paths[3])]
    images = clip.embed_images(items)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    sims = images @ text.T  # [4 images, 4 colour words]
    assert list(sims.argmax(axis=1)) == [0, 1, 2, 3] and list(sims.argmax(axis=0)) == [0, 1, 2, 3]
    many = clip.embed_images(paths * 3)  # 12 images in batches of 2: more than 4 batches shows a bar
    np.testing.assert_allclose(many[:4], clip.embed_images(paths), atol=1e-5)
    assert "embed images" in capsys.readouterr().err
    assert clip.embed_images([]).shape == (0, 32)
    raw = load_embedder({"type": "open_clip", "name": tiny_clip.name, "normalize": False})
    raw_images = raw.embed_images(paths)
    assert not np.allclose(np.linalg.norm(raw_images, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw_images / np.linalg.norm(raw_images, axis=1, keepdims=True), images, atol=1e-5)


def test_open_clip_errors_name_the_model_and_the_image(tiny_clip, tmp_path):
    with pytest.raises(ConfigError, match="embedder.name 'ViT-Nope-99'"):
        load_embedder({"type": "open_clip", "name": "ViT-Nope-99"})
    clip = load_embedder({"type": "open_clip", "name": tiny_clip.name})
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        clip.embed_images([bad])
