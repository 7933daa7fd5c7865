"""Retrieval-augmented fine-tuning (RA-DIT style): QA records become SFT conversations whose prompts carry the
retrieved passages plus distractors, and the core trainer learns from them through `data.retrieval`."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from rag_helpers import prompt_passages, tiny_lm

from mmadapt.errors import ConfigError, DataError
from mmadapt.quickstart.rag import make_world
from mmadapt.rag.augment import RetrievalDataConfig, radit_records
from mmadapt.rag.retrieve import RetrieveConfig, Retriever

NAMES, FACTS = make_world(24, seed=3)
TEXT = {f.id: f.text for f in FACTS}  # document id -> its passage
BY_TEXT = {f.text: f.id for f in FACTS}


@pytest.fixture(scope="module")
def index(build_index):
    from mmadapt.rag.chunk import Document, sha256_text

    return build_index([Document("facts.jsonl", f.text, f.id, content_hash=sha256_text(f.text)) for f in FACTS])


def qa(facts=FACTS[:8], **extra):
    return [(f"qa.jsonl:{i + 1}", {"id": f.id, "question": f.question, "answer": f.obj, "relevant": [f.id], **extra})
            for i, f in enumerate(facts)]


def build(index, records, **config):
    cfg = RetrievalDataConfig(index=str(index.path), **config)
    return radit_records(records, Retriever(index, RetrieveConfig(k=max(cfg.k, 1))), cfg)


def passages(record) -> list[str]:
    """Document ids of the passages in a conversation's prompt, in prompt order."""
    return [BY_TEXT[text] for text in prompt_passages(record["conversations"][0]["value"])]


def test_prompts_hold_k_retrieved_passages_then_distractors(index):
    records = qa()
    out = build(index, records, k=2, distractors=2, shuffle=False)
    retrieved = Retriever(index, RetrieveConfig(k=2)).retrieve_batch([r["question"] for _, r in records])
    assert len(out) == len(records)
    for (where, record), (out_where, conv), hits in zip(records, out, retrieved):
        assert out_where == where and conv["id"] == record["id"]
        ids = passages(conv)
        assert len(ids) == 4 and len(set(ids)) == 4
        top = [h.doc_id for h in hits]
        expected = top if record["id"] in top else [top[0], record["id"]]  # a missed answer replaces the last one
        assert ids[:2] == expected
        assert record["id"] not in ids[2:]  # a distractor never answers
        human, gpt = conv["conversations"]
        assert human["from"] == "human" and human["value"].endswith(f"Question: {record['question']}")
        assert gpt == {"from": "gpt", "value": record["answer"]}


def test_the_relevant_passage_is_ensured_when_retrieval_misses_it(index):
    target = FACTS[5]
    record = [("qa.jsonl:1", {"question": "tell me anything", "answer": target.obj, "relevant": [f"{target.id}#0"]})]
    missed = Retriever(index, RetrieveConfig(k=1)).retrieve("tell me anything")[0]
    assert missed.doc_id != target.id  # the precondition: retrieval alone does not find it
    [(_, ensured)] = build(index, record, k=1, distractors=1, shuffle=False)
    assert passages(ensured)[0] == target.id and ensured["id"] == "qa.jsonl:1"
    [(_, unensured)] = build(index, record, k=1, distractors=3, ensure_relevant=False)
    assert target.id not in passages(unensured) and missed.doc_id in passages(unensured)
    # distractors only: the relevant passage is the one non-distractor
    [(_, oracle)] = build(index, record, k=0, distractors=2)
    assert sorted(passages(oracle)).count(target.id) == 1 and len(passages(oracle)) == 3


def test_repeats_draw_fresh_distractors_and_orders_per_copy(index):
    records = qa(FACTS[:3])
    out = build(index, records, k=2, distractors=2, repeats=6, seed=1)
    assert [conv["id"] for _, conv in out[:6]] == [f"{FACTS[0].id}/{c}" for c in range(6)]
    assert len(out) == 18
    for i, (_, record) in enumerate(records):
        copies = [passages(conv) for _, conv in out[6 * i: 6 * i + 6]]
        assert all(record["id"] in ids and len(ids) == 4 for ids in copies)
        retrieved = set.intersection(*(set(ids) for ids in copies))  # the retrieved two are in every copy
        assert len(retrieved) >= 2 and record["id"] in retrieved
        distractor_sets = {frozenset(set(ids) - retrieved) for ids in copies}
        assert len(distractor_sets) >= 3  # fresh random distractors, not one draw reused
        positions = Counter(ids.index(record["id"]) for ids in copies)
        assert len(positions) >= 2  # shuffled: the answer's position carries no signal
    assert out == build(index, records, k=2, distractors=2, repeats=6, seed=1)  # seeded
    assert out != build(index, records, k=2, distractors=2, repeats=6, seed=2)


def test_records_with_media_lead_with_their_placeholder(index):
    [(_, conv)] = build(index, qa(FACTS[:1], image="pics/a.png"), k=1, distractors=1)
    assert conv["image"] == "pics/a.png"
    assert conv["conversations"][0]["value"].startswith("<image>\n")
    [(_, placed)] = build(index, [("q:1", {"question": "<image> what is shown", "answer": "x", "image": ["a.png"]})],
                          k=1, distractors=0)
    assert placed["conversations"][0]["value"].count("<image>") == 1


def test_bad_records_name_their_line(index):
    with pytest.raises(DataError, match=r"qa.jsonl:1: a retrieval-augmented record needs non-empty strings 'question'"):
        build(index, [("qa.jsonl:1", {"question": "", "answer": "x"})])
    with pytest.raises(DataError, match=r"qa.jsonl:1: 'relevant' must be a list"):
        build(index, [("qa.jsonl:1", {"question": "q", "answer": "x", "relevant": "fact-0001"})])
    with pytest.raises(DataError, match=r"qa.jsonl:2: 'relevant' names ids that are not in the index .*\['nope'\]"):
        build(index, qa(FACTS[:1]) + [("qa.jsonl:2", {"question": "q", "answer": "x", "relevant": ["nope"]})])
    with pytest.raises(ConfigError, match="k and distractors must be >= 0 and not both 0"):
        RetrievalDataConfig(index="i", k=0, distractors=0)
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        RetrievalDataConfig(index="i", repeats=0)


def test_data_retrieval_config_errors(index, tmp_path, tokenizer_dir):
    from mmadapt.config import DataConfig, ModelConfig, from_dict
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.rag.augment import load_retrieval_conversations

    model = MultimodalLM.from_config(from_dict(ModelConfig, {"llm": {"config": tiny_llm_config(hidden=32, heads=2),
                                                                     "tokenizer": str(tokenizer_dir)}}))
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("".join(json.dumps(r) + "\n" for _, r in qa(FACTS[:2])))
    cases = [({"index": str(tmp_path / "missing")}, "data.retrieval.index: .* is not a directory"),
             ({"index": str(index.path), "k": 2, "topk": 3}, "unknown key 'data.retrieval.topk'"),
             ({"index": str(index.path), "mode": "bm25"}, "data.retrieval.mode: 'bm25' is not valid"),
             ({"index": str(index.path), "k": 0, "distractors": 0}, "data.retrieval: k and distractors"),
             ({"index": str(index.path), "prompt": {"passage": "{text}", "header": "x"}},
              "unknown key 'data.retrieval.prompt.header'")]
    for retrieval, message in cases:
        data = DataConfig(train=str(qa_file), retrieval=retrieval)
        with pytest.raises(ConfigError, match=message):
            load_retrieval_conversations(str(qa_file), model.tokenisation_spec(), data, "data_train")
    examples, stats = load_retrieval_conversations(
        str(qa_file), model.tokenisation_spec(),
        DataConfig(train=str(qa_file), retrieval={"index": str(index.path), "repeats": 3}), "data_train")
    assert len(examples) == 6 and stats["data_train_examples"] == 6.0


def test_multimodal_records_become_examples_with_their_image(index, tmp_path, image_files):
    from mmadapt.config import DataConfig
    from mmadapt.rag.augment import load_retrieval_conversations

    model = tiny_lm([f.text for f in FACTS] + [f.question for f in FACTS] + ["Question:"], tmp_path / "vlm", image=True)
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("".join(json.dumps(r) + "\n" for _, r in qa(FACTS[:2], image=str(image_files[0]))))
    data = DataConfig(train=str(qa_file), retrieval={"index": str(index.path), "k": 1, "distractors": 1})
    examples, _ = load_retrieval_conversations(str(qa_file), model.tokenisation_spec(), data, "data_train")
    assert len(examples) == 2 and all(e.media["image"] == [image_files[0]] for e in examples)
    placeholder = model.placeholder_id("image")
    assert all(e.input_ids.count(placeholder) == model.num_media_tokens("image") for e in examples)


def test_training_through_data_retrieval_lowers_the_loss(index, tmp_path):
    """End to end: a run config with data.retrieval trains a tiny LM on RA-DIT conversations with the core trainer."""
    from mmadapt.run_config import load_run
    from mmadapt.quickstart.tokenizer import train_word_tokenizer
    from mmadapt.train.run import train

    train_word_tokenizer([f.text for f in FACTS] + [f.question for f in FACTS] + ["Question:"], tmp_path / "tok")
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("".join(json.dumps(r) + "\n" for _, r in qa(FACTS[:16])))
    config = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {"llm": {"config": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 64,
                                     "max_position_embeddings": 128}, "tokenizer": str(tmp_path / "tok")}},
        "data": {"train": str(qa_file), "max_length": 96,
                 "retrieval": {"index": str(index.path), "k": 2, "distractors": 1, "repeats": 4,
                               "prompt": {"instruction": "", "passage": "{text}"}}},
        "training": {"batch_size": 16, "lr": 1e-2, "max_steps": 24, "warmup_ratio": 0.0, "logging_steps": 1,
                     "train_modules": ["llm"]},
    }
    metrics = train(load_run(config))
    assert metrics["data_train_examples"] == 64.0  # 16 QA records x 4 repeats
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert sum(losses[-4:]) / 4 < 0.6 * losses[0], losses
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "retrieval:" in resolved and "repeats: 4" in resolved  # the run records how its prompts were built
