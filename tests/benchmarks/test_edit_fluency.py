"""Fluency is measured on long enough generations of the model given: a model that ends after one word no longer scores a constant."""

import torch

from mmadapt.editing.evaluate import evaluate, generation, ngram_entropy
from mmadapt.editing.requests import parse_requests
from mmadapt.quickstart.tokenizer import train_word_tokenizer


def _model_preferring(tok, first: str, second: str):
    """A tiny GPT-2 whose next-token logits are always 10 for `first`, 5 for `second`, 0 elsewhere."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                  tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # a constant final hidden state e0, read out by one lm_head column
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids(first), 0] = 10.0
        model.lm_head.weight[tok.convert_tokens_to_ids(second), 0] = 5.0
    return model


def test_fluency_reads_past_an_end_of_sequence_answer():
    tok = train_word_tokenizer(["the hometown of anna bel is paris rome oslo"])
    request = parse_requests([{"prompt": "the hometown of {} is", "subject": "anna bel", "target_new": "rome",
                               "target_true": "paris"}])[0]
    # both models would end the text at once; what they say when they must go on differs
    repetitive = _model_preferring(tok, tok.eos_token, "oslo")
    text = generation(repetitive, tok, request.text, max_new_tokens=12)
    assert text == request.text + " " + " ".join(["oslo"] * 12)
    metrics, _ = evaluate(repetitive, tok, [request], max_new_tokens=12)
    assert metrics["fluency"] == ngram_entropy(text.lower().split())
    # the old measure (generation stopped at the end-of-sequence token) scored the prompt alone
    assert metrics["fluency"] < ngram_entropy(request.text.split()) - 0.2
    varied = _model_preferring(tok, tok.eos_token, "paris")
    assert evaluate(varied, tok, [request], max_new_tokens=12)[0]["fluency"] == metrics["fluency"]  # same shape, same entropy
    assert generation(varied, tok, request.text, 12) != text  # but each model's own words were measured
