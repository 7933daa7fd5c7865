"""The Encoder contract, run over every case in encoder_cases.TEST_CASES (every registered encoder name)."""

from __future__ import annotations

import importlib
import shutil

import pytest
import torch
from encoder_cases import TEST_CASES, EncoderCase, tiny_model_config

from mmadapt import registry
from mmadapt.errors import DataError
from mmadapt.interfaces import Encoder

CASE_IDS = [case.id for case in TEST_CASES]


@pytest.mark.parametrize("name", registry.names("encoder"))
def test_every_registered_encoder_has_a_case(name):
    module = registry.REGISTRY["encoder"][name].split(":")[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            pytest.skip(f"{module} is not written yet")
        raise
    assert any(case.name == name for case in TEST_CASES), f"encoder {name!r} has no contract case in encoder_cases.py"


def _build(case: EncoderCase, folder):
    return registry.build("encoder", case.spec(folder), where=f"case {case.id}")


def _batch(encoder, case: EncoderCase, folder, n: int = 2) -> torch.Tensor:
    items = [encoder.preprocess(case.raw(folder)) for _ in range(n)]
    return torch.stack(items)


@pytest.mark.parametrize("case", TEST_CASES, ids=CASE_IDS)
def test_shapes_gradients_and_state_dict_round_trip(case, tmp_path):
    encoder = _build(case, tmp_path)
    assert isinstance(encoder, Encoder)
    assert encoder.modality == case.modality
    batch = _batch(encoder, case, tmp_path)
    if batch.is_floating_point():
        batch.requires_grad_(True)
    features = encoder(batch)
    assert features.shape == (2, encoder.num_features, encoder.hidden_size)
    assert torch.isfinite(features).all()

    # Gradients reach the input and the bottom of the tower (heads unused for tokens, e.g. pooling, get none).
    features.square().mean().backward()
    if batch.is_floating_point():
        assert batch.grad is not None and batch.grad.abs().sum() > 0
    first = next(encoder.parameters())  # the stem: patch embedding, class token or first convolution
    assert first.grad is not None and first.grad.abs().sum() > 0

    # A fresh instance (other random weights) loading the state dict computes the same features.
    encoder.eval()
    torch.manual_seed(1)
    other = _build(case, tmp_path / "other").eval()
    with torch.no_grad():
        assert not torch.allclose(other(batch), encoder(batch))
        other.load_state_dict(encoder.state_dict())
        torch.testing.assert_close(other(batch), encoder(batch))


@pytest.mark.parametrize("case", TEST_CASES, ids=CASE_IDS)
def test_items_are_encoded_independently_of_the_batch(case, tmp_path):
    encoder = _build(case, tmp_path).eval()
    first, second = encoder.preprocess(case.raw(tmp_path)), encoder.preprocess(case.raw(tmp_path / ".."))
    with torch.no_grad():
        together = encoder(torch.stack([first, second]))
        alone = encoder(first[None])
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", TEST_CASES, ids=CASE_IDS)
def test_missing_media_file_names_the_path(case, tmp_path):
    encoder = _build(case, tmp_path)
    missing = tmp_path / "no_such_file.bin"
    with pytest.raises(DataError, match="no_such_file"):
        encoder.preprocess(str(missing))


@pytest.mark.parametrize("case", TEST_CASES, ids=CASE_IDS)
def test_round_trip_through_multimodal_lm(case, tmp_path):
    """Build a tiny MultimodalLM with this encoder, save it, delete the encoder's source files, load it back."""
    from mmadapt.model import PLACEHOLDERS, MultimodalLM

    sources = tmp_path / "sources"
    sources.mkdir()
    model = MultimodalLM.from_config(tiny_model_config(tmp_path, case.spec(sources), case.modality)).eval()
    item = model.encoders[case.modality].preprocess(case.raw(tmp_path))
    n_tokens = model.num_media_tokens(case.modality)
    assert n_tokens == model.encoders[case.modality].num_features  # the MLP connector keeps every token
    tokenizer = model.tokenizer
    ids = tokenizer("what is in the picture ?")["input_ids"]
    input_ids = torch.tensor([[model.placeholder_id(case.modality)] * n_tokens + ids])
    media = {case.modality: item[None]}
    with torch.no_grad():
        logits = model(input_ids, media=media).logits
        text_only = model(input_ids[:, n_tokens:]).logits
    assert PLACEHOLDERS[case.modality] in tokenizer.get_vocab()
    assert not torch.allclose(logits[:, n_tokens:], text_only)  # the media tokens reach the text positions

    model.save_pretrained(tmp_path / "checkpoint")
    shutil.rmtree(sources)  # the checkpoint alone must rebuild the encoder (config, preprocessing)
    loaded = MultimodalLM.from_pretrained(tmp_path / "checkpoint").eval()
    reloaded_item = loaded.encoders[case.modality].preprocess(case.raw(tmp_path))
    torch.testing.assert_close(reloaded_item, item)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids, media=media).logits, logits)
