"""ChatEngine as a library (the web app's entry): model kinds, media, retrieval, batching, bounds."""

from __future__ import annotations

import threading

import pytest
from serve_helpers import png_data_url, wav_base64

from mmadapt.errors import DataError
from mmadapt.serve import ChatEngine, EngineConfig, Overloaded, SamplingParams
from mmadapt.serve.engine import ContextLengthError

GREEDY = SamplingParams(max_tokens=6, temperature=0)


def user(content):
    return [{"role": "user", "content": content}]


def test_plain_hf_causal_lm_directory_is_served(plain_lm_dir):
    engine = ChatEngine.from_directory(plain_lm_dir)
    try:
        result = engine.chat(user("hello world"), GREEDY)
        assert result.text and result.finish_reason == "length" and result.completion_tokens == 6
        assert engine.name == "plain" and engine.context_length == 128
        image = [{"type": "text", "text": "what colour is it"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
        with pytest.raises(DataError, match=r"messages\[0\]\.content\[1\]: this model has no image encoder"):
            engine.submit(user(image), GREEDY)
    finally:
        engine.close()


def test_image_and_audio_parts_reach_the_model(engine):
    parts = [{"type": "image_url", "image_url": {"url": png_data_url((0, 0, 255))}},
             {"type": "input_audio", "input_audio": {"data": wav_base64(), "format": "wav"}},
             {"type": "text", "text": "what colour is it"}]
    with_media = engine.chat(user(parts), GREEDY, retrieve=False)
    assert with_media.completion_tokens == 6
    # the media tokens are in the prompt: more prompt tokens than the text alone
    assert with_media.prompt_tokens > engine.chat(user("what colour is it"), GREEDY, retrieve=False).prompt_tokens + 2
    bad = [{"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}}]  # base64 of "hello"
    with pytest.raises(DataError, match="audio item 1: does not decode"):
        engine.submit(user(bad), GREEDY)


def test_retrieval_puts_passages_in_the_prompt_and_cites_them(engine):
    result = engine.chat(user("which planet is the biggest ?"), GREEDY)
    assert [c.n for c in result.citations] == [1, 2, 3]
    top = result.citations[0]
    assert (top.id, top.source) == ("doc-0#0", "corpus/astronomy.txt") and "Jupiter" in top.text
    assert top.score >= result.citations[1].score
    bare = engine.chat(user("which planet is the biggest ?"), GREEDY, retrieve=False)
    assert bare.citations == [] and bare.prompt_tokens < result.prompt_tokens


def test_concurrent_requests_are_decoded_together_and_match_solo_answers(engine):
    prompts = ["hello", "the quick brown fox", "which planet is the biggest ?", "red green", "one two three top",
               "how do I bake bread", "what colour is it", "the lazy dog . hello world"]
    solo = [engine.chat(user(p), GREEDY, retrieve=False).text for p in prompts]
    before = engine.stats["batches"]
    results: list = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def ask(i):
        start.wait()
        results[i] = engine.chat(user(prompts[i]), GREEDY, retrieve=False).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == solo  # left-padded batch rows decode as they do alone
    assert engine.stats["batches"] - before < len(prompts) and engine.stats["largest_batch"] > 1


def test_seed_reproduces_a_sampled_answer_and_stream_matches(engine):
    params = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    first = engine.chat(user("hello"), params, retrieve=False)
    again = engine.chat(user("hello"), params, retrieve=False)
    assert first.text == again.text
    others = {engine.chat(user("hello"), SamplingParams(max_tokens=8, temperature=1.0, seed=s), retrieve=False).text
              for s in range(4)}
    assert len(others) > 1
    *pieces, result = list(engine.stream(user("hello"), params, retrieve=False))
    assert "".join(pieces) == result.text == first.text and len(pieces) > 1


def test_context_and_range_limits(engine):
    with pytest.raises(ContextLengthError, match="context is 256 tokens"):
        engine.submit(user("hello " * 300), GREEDY)
    with pytest.raises(ContextLengthError, match="plus max_tokens"):
        engine.submit(user("hello " * 220), SamplingParams(max_tokens=60), retrieve=False)
    for bad, match in [(SamplingParams(max_tokens=0), "max_tokens: 0 is out of range; valid: 1..64"),
                       (SamplingParams(temperature=3), "temperature"), (SamplingParams(top_p=0), "top_p"),
                       (SamplingParams(stop=["a"] * 5), "stop")]:
        with pytest.raises(DataError, match=match):
            engine.submit(user("hello"), bad)


def test_a_full_queue_refuses_instead_of_growing(engine):
    small = ChatEngine(engine.model, "small", EngineConfig(max_queue=1, max_batch_size=1))
    try:
        long = SamplingParams(max_tokens=200, temperature=0)
        handles = []
        with pytest.raises(Overloaded, match="1 requests are waiting"):
            for _ in range(3):
                handles.append(small.submit(user("hello"), long))
        for handle in handles:
            handle.cancel()
        # refused once the worker holds <= 1 and the queue 1 (the worker may not have taken the first yet)
        assert 1 <= len(handles) <= 2
        assert all(list(h.events())[-1][1].finish_reason == "cancelled" for h in handles)
        assert small.chat(user("hello"), GREEDY).completion_tokens == 6  # and it still serves
    finally:
        small.close()


def test_hf_vision_language_directory_is_served_with_an_image(tmp_path):
    from mmadapt.hf.tiny import save_tiny_vlm

    engine = ChatEngine.from_directory(save_tiny_vlm("llava", tmp_path / "llava"))
    try:
        assert engine.modalities == ("image",)
        parts = [{"type": "image_url", "image_url": {"url": png_data_url()}}, {"type": "text", "text": "what colour"}]
        with_image = engine.chat(user(parts), SamplingParams(max_tokens=4, temperature=0))
        text_only = engine.chat(user("what colour"), SamplingParams(max_tokens=4, temperature=0))
        assert with_image.prompt_tokens > text_only.prompt_tokens  # the processor expanded the image
        assert 1 <= with_image.completion_tokens <= 4 and with_image.finish_reason in ("stop", "length")
    finally:
        engine.close()
