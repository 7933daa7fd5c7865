"""Second moments: C = E[k kᵀ] over the corpus, cached on disk per model, module and corpus, and reused."""

import torch

from mmadapt.editing.requests import parse_requests
from mmadapt.editing.rome import RomeHParams, apply_rome
from mmadapt.editing.stats import StatsCache, StatsConfig
from mmadapt.hooks import Trace
from edit_helpers import corpus_texts, tiny_model

MODULE = "model.layers.1.mlp.down_proj"


class ForwardCounter:
    """Counts the model's forward passes (a cache hit must run none)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def test_second_moment_is_the_mean_outer_product(word_tok, corpus_file, tmp_path):
    model = tiny_model("llama", vocab_size=len(word_tok))
    config = StatsConfig(corpus=str(corpus_file), batch_size=3)
    cov = StatsCache(tmp_path).second_moments(model, word_tok, [MODULE], config)[MODULE]
    keys = []
    for text in corpus_texts():  # one text at a time: no padding involved
        with torch.no_grad(), Trace(model, MODULE, retain_input=True) as trace:
            model(input_ids=torch.tensor([word_tok(text)["input_ids"]]))
        keys.append(trace.input[0].double())
    keys = torch.cat(keys)  # [positions, d_ff]
    assert torch.allclose(cov.double(), keys.T @ keys / len(keys), rtol=1e-4, atol=1e-6)


def test_cache_is_reused_from_disk_and_keyed_by_model_and_corpus(word_tok, corpus_file, tmp_path):
    model = tiny_model("llama", vocab_size=len(word_tok))
    config = StatsConfig(corpus=str(corpus_file))
    first = StatsCache(tmp_path)
    cov = first.second_moments(model, word_tok, [MODULE], config)[MODULE]
    assert first.computed == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1

    counter = ForwardCounter(model)
    second = StatsCache(tmp_path)  # a new process would start like this
    again = second.second_moments(model, word_tok, [MODULE], config)[MODULE]
    assert counter.calls == 0 and second.loaded == 1 and second.computed == 0
    assert torch.equal(cov, again)
    second.second_moments(model, word_tok, [MODULE], config)
    assert second.loaded == 1  # the second request in a process is served from memory

    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text("the bridge of dara is in rome .\n")
    second.second_moments(model, word_tok, [MODULE], StatsConfig(corpus=str(other_corpus)))
    assert second.computed == 1 and counter.calls > 0

    with torch.no_grad():
        model.get_parameter("model.embed_tokens.weight").mul_(1.5)  # a different model
    second.second_moments(model, word_tok, [MODULE], config)
    assert second.computed == 2 and len(list(tmp_path.glob("*.safetensors"))) == 3


def test_rome_reuses_cached_statistics(word_tok, corpus_file, tmp_path):
    request = parse_requests([{"prompt": "the tower of {}", "subject": "alba", "target_new": "rome"}])
    hp = RomeHParams(layer=1, num_prefixes=0, v_steps=2, stats=StatsConfig(corpus=str(corpus_file), cache_dir=str(tmp_path)))
    apply_rome(tiny_model("llama", vocab_size=len(word_tok)), word_tok, request, hp)
    model = tiny_model("llama", vocab_size=len(word_tok))  # the same weights again (same seed)
    cache = StatsCache(tmp_path)
    apply_rome(model, word_tok, request, hp, cache=cache)
    assert cache.loaded == 1 and cache.computed == 0
