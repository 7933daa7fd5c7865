"""Every task kind on generated data with known answers, against a tiny real model."""

from __future__ import annotations

import math

import pytest
import torch

from mmadapt.config import from_dict
from mmadapt.eval.config import TaskConfig
from mmadapt.eval.scoring import LLRequest, generate_chat, load_eval_model, loglikelihood, rolling_loglikelihood
from mmadapt.eval.tasks import generation, multiple_choice, perplexity, preference, short_answer
from tests.eval.helpers import independent_logprob, save_tiny, write_jsonl

WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "one", "two", "three"]
QUESTIONS = ["what colour is the shape ?", "which shape is in the image ?", "how many shapes are there ?",
             "where is it ?"]


@pytest.fixture
def text_model(make_model_config, tmp_path):
    return load_eval_model(save_tiny(make_model_config, tmp_path / "text", image=False))


@pytest.fixture
def image_model(make_model_config, tmp_path):
    return load_eval_model(save_tiny(make_model_config, tmp_path / "vlm", image=True))


def task(kind: str, path, **kw) -> TaskConfig:
    return from_dict(TaskConfig, {"name": kind, "kind": kind, "path": str(path), **kw})


def test_batched_loglikelihood_equals_one_sequence_at_a_time(image_model, image_files):
    from mmadapt.generate import encode_prompt

    requests = [LLRequest("", w, [{"role": "user", "content": "<image>\n" + q}], {"image": [image_files[i % 4]]})
                for i, (q, w) in enumerate(zip(QUESTIONS * 3, WORDS))]
    batched = loglikelihood(image_model, requests, batch_size=4)
    single = loglikelihood(image_model, requests, batch_size=1)
    for (a, n, _), (b, m, _) in zip(batched, single):
        assert n == m == 1 and a == pytest.approx(b, abs=1e-4)
    # text only: the same number through the plain LLM, unpadded
    tok = image_model.tokenizer
    text_req = LLRequest("", "blue", [{"role": "user", "content": QUESTIONS[0]}])
    ids = encode_prompt(image_model, text_req.messages, {})
    ref = independent_logprob(image_model, ids, tok("blue", add_special_tokens=False)["input_ids"])
    assert loglikelihood(image_model, [text_req])[0][0] == pytest.approx(ref, abs=1e-4)


def test_short_answer_scores_known_answers(image_model, image_files, tmp_path):
    prompts = [([{"role": "user", "content": "<image>\n" + q}], {"image": [image_files[i]]}) for i, q in enumerate(QUESTIONS)]
    said = generate_chat(image_model, prompts, max_new_tokens=4)
    (tmp_path / "images").mkdir()
    records = []
    for i, (q, answer) in enumerate(zip(QUESTIONS, said)):
        # item 0 carries the model's own answer, item 2 it upper-cased (only normalised match accepts it), 1 and 3 wrong ones
        reference = {0: answer, 2: answer.upper() + "."}.get(i, "zz wrong answer")
        records.append({"question": q, "answer": reference, "image": str(image_files[i])})
    result = short_answer(image_model, task("short_answer", write_jsonl(tmp_path / "qa.jsonl", records), max_new_tokens=4),
                          list(enumerate_records(records)), tmp_path, 4)
    assert result.metrics["normalized_match"] == 0.5
    assert result.metrics["exact_match"] == 0.25
    assert 0.5 <= result.metrics["anls"] < 1.0


def enumerate_records(records):
    return ((f"qa.jsonl:{i + 1}", r) for i, r in enumerate(records))


def test_multiple_choice_picks_the_most_likely_option(image_model, image_files, tmp_path):
    from mmadapt.generate import encode_prompt

    tok = image_model.tokenizer
    records = []
    for i, q in enumerate(QUESTIONS):
        choices = WORDS[i:i + 3]
        messages = [{"role": "user", "content": "<image>\n" + q}]
        ids = encode_prompt(image_model, messages, {"image": [image_files[i]]})
        media = {"image": torch.stack([image_model.encoders["image"].preprocess(image_files[i])])}
        embeds_ids = torch.tensor([ids + tok(c, add_special_tokens=False)["input_ids"] for c in choices])
        with torch.no_grad():  # independent scoring: unbatched, one row per choice
            logits = image_model(input_ids=embeds_ids, media={"image": media["image"].repeat(3, 1, 1, 1)}).logits
        scores = [float(torch.log_softmax(logits[j, len(ids) - 1], -1)[embeds_ids[j, len(ids)]]) for j in range(3)]
        best = max(range(3), key=lambda j: scores[j])
        records.append({"question": q, "choices": choices, "image": str(image_files[i]),
                        "answer": best if i < 3 else choices[(best + 1) % 3]})
    path = write_jsonl(tmp_path / "mc.jsonl", records)
    result = multiple_choice(image_model, task("multiple_choice", path), list(enumerate_records(records)), tmp_path, 3)
    assert result.samples["accuracy"] == [1.0, 1.0, 1.0, 0.0]


def test_generation_metrics_on_the_models_own_output(text_model, tmp_path):
    prompts = [([{"role": "user", "content": q}], {}) for q in QUESTIONS]
    said = generate_chat(text_model, prompts, max_new_tokens=8)
    assert any(len(s.split()) >= 4 for s in said)  # a random model rambles: corpus BLEU has 4-grams to count
    same = [{"question": q, "reference": s} for q, s in zip(QUESTIONS, said)]
    wrong = [{"question": q, "reference": "the quick brown fox jumps over the lazy dog"} for q in QUESTIONS]
    good = generation(text_model, task("generation", tmp_path / "g.jsonl", max_new_tokens=8),
                      list(enumerate_records(same)), tmp_path, 4)
    bad = generation(text_model, task("generation", tmp_path / "g.jsonl", max_new_tokens=8),
                     list(enumerate_records(wrong)), tmp_path, 4)
    assert good.metrics == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0), "rouge_l": pytest.approx(1.0)}
    assert bad.metrics["bleu"] < 50 and bad.metrics["chrf"] < 100 and bad.metrics["rouge_l"] < 1.0


def test_perplexity_matches_the_models_own_loss(text_model, tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog", "red green blue yellow"]
    tok = text_model.tokenizer
    nll, count = 0.0, 0
    for text in texts:
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            loss = text_model.llm(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
        nll += float(loss) * (len(ids) - 1)
        count += len(ids) - 1
    result = perplexity(text_model, task("perplexity", tmp_path / "p.jsonl"),
                        list(enumerate_records([{"text": t} for t in texts])), tmp_path, 2)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert result.metrics["tokens"] == count
    # windows shorter than the text give the same total when each window sees all that fits before it
    windowed = rolling_loglikelihood(text_model, texts[:1], max_length=4)[0]
    full = rolling_loglikelihood(text_model, texts[:1])[0]
    assert windowed[1] == full[1] and windowed[0] < full[0] + 5  # less context, similar magnitude


def test_preference_accuracy_and_margin_follow_the_likelihoods(text_model, tmp_path):
    pairs = [("what colour is the shape ?", "red", "blue"), ("how many shapes are there ?", "one", "three"),
             ("which shape is in the image ?", "circle", "square")]
    requests = [LLRequest("", a, [{"role": "user", "content": q}]) for q, c, r in pairs for a in (c, r)]
    lp = [s[0] for s in loglikelihood(text_model, requests)]
    records = []
    for i, (q, c, r) in enumerate(pairs):  # chosen = the likelier answer, except for the last pair
        likely, unlikely = (c, r) if lp[2 * i] > lp[2 * i + 1] else (r, c)
        chosen, rejected = (likely, unlikely) if i < 2 else (unlikely, likely)
        records.append({"prompt": q, "chosen": chosen, "rejected": rejected})
    result = preference(text_model, task("preference", tmp_path / "pref.jsonl"), list(enumerate_records(records)), tmp_path, 4)
    assert result.samples["preference_accuracy"] == [1.0, 1.0, 0.0]
    margins = [abs(lp[2 * i] - lp[2 * i + 1]) for i in range(3)]
    assert result.samples["reward_margin"] == pytest.approx([margins[0], margins[1], -margins[2]], abs=1e-4)


def test_preference_with_a_reference_model_gives_dpo_reward_margins(text_model, make_model_config, tmp_path):
    ref_dir = save_tiny(make_model_config, tmp_path / "ref", image=False, seed=5)
    records = [{"prompt": "what colour is the shape ?", "chosen": "red", "rejected": "blue"},
               {"prompt": "how many shapes are there ?", "chosen": "one", "rejected": "three"}]
    requests = [LLRequest("", r[k], [{"role": "user", "content": r["prompt"]}]) for r in records for k in ("chosen", "rejected")]
    policy = [s[0] for s in loglikelihood(text_model, requests)]
    reference = [s[0] for s in loglikelihood(load_eval_model(ref_dir), requests)]
    rewards = [0.5 * (p - r) for p, r in zip(policy, reference)]
    config = task("preference", tmp_path / "p.jsonl", reference=str(ref_dir), beta=0.5)
    result = preference(text_model, config, list(enumerate_records(records)), tmp_path, 4)
    assert result.samples["reward_margin"] == pytest.approx([rewards[0] - rewards[1], rewards[2] - rewards[3]], abs=1e-4)
    assert result.samples["preference_accuracy"] == [float(rewards[0] > rewards[1]), float(rewards[2] > rewards[3])]
    # the same model as its own reference: every reward is zero, no pair is won
    same = preference(load_eval_model(ref_dir), config, list(enumerate_records(records)), tmp_path, 4)
    assert same.samples["reward_margin"] == [0.0, 0.0] and same.samples["preference_accuracy"] == [0.0, 0.0]



def test_multiple_choice_with_audio_and_video_prompts(tokenizer_dir, tmp_path):
    """Option log-likelihood with an audio clip or a video in the prompt: batched equals one at a time."""
    import random
    import wave

    import numpy as np

    from mmadapt.config import ModelConfig
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.motion import make_clip, write_video
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder

    vit = tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1)
    config = from_dict(ModelConfig, {
        "llm": {"config": tiny_llm_config("llama", hidden=32, heads=2), "tokenizer": str(tokenizer_dir)},
        "encoders": {"audio": {"name": "tiny_audio", "width": 32, "depth": 1, "heads": 2, "n_mels": 16, "window_seconds": 0.5},
                     "video": {"name": "video", "frame_encoder": vit, "num_frames": 4, "aggregate": "mean"}},
        "connectors": {"audio": {"name": "linear"}, "video": {"name": "linear"}}})
    torch.manual_seed(0)
    MultimodalLM.from_config(config).save_pretrained(tmp_path / "av")
    model = load_eval_model(tmp_path / "av")
    rng = random.Random(0)
    records = []
    for i in range(4):
        path = tmp_path / f"clip{i}.wav"
        with wave.open(str(path), "wb") as f:  # a tone of a different pitch per clip, 16 kHz mono
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16000)
            t = np.arange(8000) / 16000
            f.writeframes((np.sin(2 * np.pi * (220 + 110 * i) * t) * 20000).astype(np.int16).tobytes())
        records.append({"question": "how many shapes are there ?", "choices": ["one", "two", "three"], "audio": str(path)})
        frames, _ = make_clip(rng, "direction", size=16, num_frames=4, square=4)
        write_video(tmp_path / f"clip{i}.mp4", frames)
        records.append({"question": "where is it ?", "choices": ["left", "right", "top"], "video": str(tmp_path / f"clip{i}.mp4")})
    items = list(enumerate_records(records))
    from mmadapt.eval.tasks import _prompt

    requests = []
    for where, r in items:
        messages, media = _prompt(model, r, where, tmp_path)
        requests += [LLRequest("", c, messages, media) for c in r["choices"]]
    single = [s[0] for s in loglikelihood(model, requests, batch_size=1)]
    batched = [s[0] for s in loglikelihood(model, requests, batch_size=8)]
    assert batched == pytest.approx(single, abs=1e-4)
    for n, r in enumerate(records):  # answer: the option the unbatched scores prefer, wrong for the last item
        best = max(range(3), key=lambda j: single[3 * n + j])
        r["answer"] = best if n < len(records) - 1 else (best + 1) % 3
    result = multiple_choice(model, task("multiple_choice", tmp_path / "av.jsonl"), list(enumerate_records(records)), tmp_path, 8)
    assert result.samples["accuracy"] == [1.0] * (len(records) - 1) + [0.0]
