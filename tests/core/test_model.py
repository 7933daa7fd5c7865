"""MultimodalLM on tiny Llama / Qwen2 / GPT-2: text-only equivalence, splicing, mixed batches, generate, save/load."""

import pytest
import torch

from mmadapt.data.collator import ConversationCollator
from mmadapt.data.conversations import Example
from mmadapt.errors import DataError
from mmadapt.model import MultimodalLM

FAMILIES = ["llama", "qwen2", "gpt2"]


def word_ids(model, text="the quick brown fox jumps over the lazy dog"):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _example(model, text_ids, n_images, image_paths):
    pid, m = model.placeholder_id("image"), model.num_media_tokens("image")
    ids = [pid] * (m * n_images) + text_ids
    return Example("test", ids, [-100] * (m * n_images) + text_ids, {"image": image_paths[:n_images]} if n_images else {})


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_is_exactly_the_llm(make_model_config, family):
    model = MultimodalLM.from_config(make_model_config(family)).eval()
    w = word_ids(model)
    ids = torch.tensor([w[:4], w[4:8]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        plain = model.llm(input_ids=ids).logits
    torch.testing.assert_close(ours, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_media_tokens_are_spliced_at_placeholders(make_model_config, image_files, family):
    model = MultimodalLM.from_config(make_model_config(family)).eval()
    collator = ConversationCollator(model.tokenisation_spec())
    # sample 0: two images; sample 1: none; sample 2: one image  (mixed batch, several images per sample)
    w = word_ids(model)
    batch = collator([_example(model, w[:3], 2, image_files), _example(model, w[3:5], 0, image_files),
                      _example(model, w[5:6], 1, image_files[2:])])
    assert batch["media"]["image"].shape[0] == 3
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["media"])
        expected = model.encode("image", batch["media"]["image"])  # [3, M, H]
    mask = batch["input_ids"] == model.placeholder_id("image")
    torch.testing.assert_close(embeds[mask], expected.reshape(-1, expected.shape[-1]))
    text = model.llm.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(embeds[~mask], text[~mask])
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, media=batch["media"])
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)


def test_placeholder_media_mismatch_is_a_clear_error(make_model_config, image_files):
    model = MultimodalLM.from_config(make_model_config("llama"))
    collator = ConversationCollator(model.tokenisation_spec())
    batch = collator([_example(model, word_ids(model)[:2], 1, image_files)])
    with pytest.raises(DataError, match="placeholder positions"):
        model.embed(batch["input_ids"], {"image": torch.cat([batch["media"]["image"]] * 2)})
    with pytest.raises(DataError, match="no image items"):
        model.embed(batch["input_ids"], None)


def test_generate_with_images_matches_greedy_forward(make_model_config, image_files):
    model = MultimodalLM.from_config(make_model_config("llama")).eval()
    batch = ConversationCollator(model.tokenisation_spec())([_example(model, word_ids(model)[:3], 1, image_files)])
    new = model.generate(batch["input_ids"], batch["attention_mask"], media=batch["media"], max_new_tokens=4, do_sample=False)
    assert new.shape == (1, 4)
    # the first generated token is the argmax of a plain forward pass (KV cache path == no cache path)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=batch["media"]).logits
    assert int(new[0, 0]) == int(logits[0, -1].argmax())
    ids = torch.cat([batch["input_ids"], new[:, :1]], dim=1)
    with torch.no_grad():
        logits2 = model(input_ids=ids, media=batch["media"]).logits
    assert int(new[0, 1]) == int(logits2[0, -1].argmax())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_and_load_round_trip(make_model_config, image_files, tmp_path, family):
    model = MultimodalLM.from_config(make_model_config(family)).eval()
    batch = ConversationCollator(model.tokenisation_spec())([_example(model, word_ids(model)[:3], 1, image_files)])
    model.save_pretrained(tmp_path / "ckpt", manifest={"kind": "test"})
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"mmadapt_model.yaml", "llm", "multimodal.safetensors", "manifest.json"} <= files
    assert not list((tmp_path / "ckpt").rglob("*.bin")) and not list((tmp_path / "ckpt").rglob("*.pt"))
    loaded = MultimodalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], media=batch["media"]).logits
        b = loaded(input_ids=batch["input_ids"], media=batch["media"]).logits
    torch.testing.assert_close(a, b)
    # the LLM part is a plain HF directory, loadable without mmadapt
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "llm")
    assert "<image>" in AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "llm").get_vocab()
    ids = torch.tensor([word_ids(model)[:3]])
    torch.testing.assert_close(plain(input_ids=ids).logits, model.llm(input_ids=ids).logits)


def test_gradient_checkpointing_gives_the_same_gradients(make_model_config, image_files):
    model = MultimodalLM.from_config(make_model_config("llama")).train()
    batch = ConversationCollator(model.tokenisation_spec())([_example(model, word_ids(model)[:4], 1, image_files)])

    def grads():
        model.zero_grad()
        model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, media=batch["media"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and any(k.startswith("connectors.") for k in plain)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)
