"""`mmadapt quickstart rag`: a tiny LM learns to answer from retrieved passages about facts it never saw.

The world is invented (so no model can know it): entities with made-up names, one fact each,
written as "quenvik is the capital of zorblat ." and asked as "what is the capital of zorblat".
The corpus is indexed with the real MiniLM embedder; the LM is trained with retrieval-augmented
fine-tuning (RA-DIT style: the retrieved passages, in rank order, sometimes followed by a random
distractor) through the core trainer, on questions about two thirds of the facts, and evaluated on
the other third with the same layout (the 3 top passages).

Memorising cannot lower the training loss: every training example is a retrieved context whose
entity names are all redrawn at random (consistently within the example), so the answer differs
every time the same question shape recurs, and only reading the passages predicts it. All entity
names occur in training, as subjects and as answers.

What the tiny model learns (measured, see the issue note): mostly to read the answer from the
top-ranked passage, where the retriever puts the right fact for 0.90 of the held-out questions; the
128-wide model has also begun to match the question's subject (0.975 right on the held-out questions;
0.25 when the right passage is put second of three behind facts of the same relation, where the
64-wide model gets none). The rank order is kept, as RA-DIT keeps it: with the passages shuffled, so
that only matching the subject finds the answer, the 2-layer model stayed at chance for the whole
budget (a 128-wide one reached about 0.35 after 1250 steps). One layout only (always 4 passages)
taught it to count from the end of the prompt, which a 3-passage question then defeated; 3 or 4
passages in training make it read from the start.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmadapt.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

RELATIONS = ("capital", "founder", "mascot", "river", "ruler", "currency")
SENTENCE = "{o} is the {r} of {s} ."
QUESTION = "what is the {r} of {s}"
# No role headers: the answer follows the question directly (a prefix-consistent template, as the core requires).
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{{ ' ' + message['content'] + '<|im_end|>' }}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)
PROMPT = {"instruction": "", "passage": "{text}", "question": "question : {question}"}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl", "tr", "sk", "vr", "zh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("n", "r", "l", "x", "k", "th", "sh", "m", "v", "t", "nd", "rk")


@dataclass
class Fact:
    id: str
    subject: str
    relation: str
    obj: str

    @property
    def text(self) -> str:
        return SENTENCE.format(o=self.obj, r=self.relation, s=self.subject)

    @property
    def question(self) -> str:
        return QUESTION.format(r=self.relation, s=self.subject)


def invent_names(n: int, rng: random.Random) -> list[str]:
    """`n` distinct pronounceable made-up words (never English: checked against the relation words)."""
    names: list[str] = []
    seen = set(RELATIONS) | {"is", "the", "of", "what", "question"}
    while len(names) < n:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2)))) + rng.choice(_CODAS)
        if len(word) >= 4 and word not in seen:
            seen.add(word)
            names.append(word)
    return names


def make_world(n_entities: int, seed: int) -> tuple[list[str], list[Fact]]:
    """Entities and one fact per entity (its subject); objects are other entities of the same pool."""
    rng = random.Random(seed)
    names = invent_names(n_entities, rng)
    facts = []
    for i, subject in enumerate(names):
        obj = rng.choice([n for n in names if n != subject])
        facts.append(Fact(f"fact-{i:04d}", subject, rng.choice(RELATIONS), obj))
    return names, facts


def redraw(record: dict[str, Any], names: list[str], rng: random.Random) -> dict[str, Any]:
    """The same conversation with every entity name replaced by a random one (one-to-one within the record)."""
    pool = set(names)
    found = list(dict.fromkeys(w for turn in record["conversations"] for w in re.findall(r"[a-z]+", turn["value"]) if w in pool))
    mapping = dict(zip(found, rng.sample(names, len(found))))

    def swap(text: str) -> str:
        return re.sub(r"[a-z]+", lambda m: mapping.get(m.group(0), m.group(0)), text)

    return {**record, "conversations": [{**t, "value": swap(t["value"])} for t in record["conversations"]]}


def split(facts: list[Fact]) -> tuple[list[Fact], list[Fact]]:
    """(training facts: the first two thirds, evaluation facts: the rest)."""
    n_train = len(facts) * 2 // 3
    return facts[:n_train], facts[n_train:]


def write_corpus(path: Path, facts: list[Fact]) -> None:
    """The facts as JSONL passages (`id`, `text`, `relation`): what the index is built from."""
    atomic_write_text(path, "".join(json.dumps({"id": f.id, "text": f.text, "relation": f.relation}) + "\n" for f in facts))


def training_examples(train_facts: list[Fact], names: list[str], retriever: Any, seed: int, redraws: int,
                      shuffle: bool = False) -> list[dict[str, Any]]:
    """RA-DIT conversations about `train_facts`: the 3 retrieved passages in rank order (the fact's own passage
    ensured), then no distractor (half the copies) or one, `redraws` copies each with every entity name redrawn."""
    from mmadapt.rag.augment import RetrievalDataConfig, radit_records

    rng = random.Random(seed)
    qa = [(f.id, {"id": f.id, "question": f.question, "answer": f.obj, "relevant": [f.id]}) for f in train_facts]
    examples = []
    for distractors, copies in ((0, redraws // 2), (1, redraws - redraws // 2)):
        config = RetrievalDataConfig(index=str(retriever.index.final_path), k=3, distractors=distractors,
                                     seed=seed + distractors, repeats=copies, prompt=PROMPT, shuffle=shuffle)
        examples += [redraw(record, names, rng) for _, record in radit_records(qa, retriever, config)]
    rng.shuffle(examples)
    return examples


def run_config(out: Path, seed: int, epochs: float) -> dict[str, Any]:
    """The run config of the LM: a 2-layer Llama with tied embeddings (copying a context word is then cheap),
    128 wide: at 64 it only learned to copy the top passage (0.90 = recall@1), at 128 it begins to match subjects."""
    return {
        "seed": seed,
        "output_dir": str(out / "model"),
        "model": {"llm": {
            "config": {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 4, "intermediate_size": 256, "max_position_embeddings": 128,
                       "tie_word_embeddings": True},
            "tokenizer": str(out / "data" / "tokenizer"),
        }},
        # the prompt layout is recorded with the model, so `mmadapt rag ask` asks the way it was trained
        "data": {"train": str(out / "data" / "train.jsonl"), "max_length": 96, "retrieval": {"prompt": PROMPT, "k": 3}},
        "training": {"threads": 1, "batch_size": 64, "lr": 2e-3, "warmup_ratio": 0.05, "scheduler": "cosine",
                     "epochs": epochs, "train_modules": ["llm"], "logging_steps": 50},
    }


def accuracy(answers: list[Any], facts: list[Fact]) -> float:
    from mmadapt.eval.metrics import accuracy as answer_accuracy

    return answer_accuracy([a.text for a in answers], [f.obj for f in facts])


def run(out: Path, connector: str | None = None, seed: int = 0, n_entities: int = 120, redraws: int = 300,
        epochs: float = 8.0) -> dict[str, float]:
    from mmadapt.run_config import load_run
    from mmadapt.errors import ConfigError
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tokenizer import train_word_tokenizer
    from mmadapt.rag.augment import RAGPipeline, training_prompt
    from mmadapt.rag.ingest import ingest
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever, evaluate
    from mmadapt.rag.store import RagIndex
    from mmadapt.cli.train import print_table
    from mmadapt.train.run import train

    if connector is not None:
        raise ConfigError("the rag quickstart has no connector (it trains a text-only LM)")
    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(seed)
    names, facts = make_world(n_entities, seed)
    train_facts, eval_facts = split(facts)
    data = out / "data"
    write_corpus(data / "corpus.jsonl", facts)

    built = time.perf_counter()
    index, _ = RagIndex.build(out / "index", ingest([data / "corpus.jsonl"]).documents, overwrite=True)
    index_seconds = time.perf_counter() - built
    retriever = Retriever(index, RetrieveConfig(k=3))
    retrieval = evaluate(retriever, [f.question for f in eval_facts], [{f.id} for f in eval_facts], ks=(1, 3, 5))

    examples = training_examples(train_facts, names, retriever, seed, redraws)
    atomic_write_text(data / "train.jsonl", "".join(json.dumps(e) + "\n" for e in examples))
    tokenizer = train_word_tokenizer([f.text for f in facts] + [f.question for f in facts] + ["question :"])
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(data / "tokenizer"))

    summary = train(load_run(run_config(out, seed, epochs)), overwrite=True)  # re-runs replace their own outputs
    model = MultimodalLM.from_pretrained(out / "model")
    pipeline = RAGPipeline(model, retriever, prompt=training_prompt(out / "model"), max_new_tokens=3)
    questions = [f.question for f in eval_facts]
    with_rag = pipeline.ask_batch(questions)
    without = pipeline.ask_batch(questions, retrieve=False)
    metrics = {
        "recall_at_5": retrieval["recall_at_5"],
        "recall_at_1": retrieval["recall_at_1"],
        "mrr": retrieval["mrr"],
        "answer_accuracy_with_rag": accuracy(with_rag, eval_facts),
        "answer_accuracy_without_rag": accuracy(without, eval_facts),
        "eval_questions": float(len(eval_facts)),
        "train_examples": float(len(examples)),
        "train_loss": summary["train_loss"],
        "train_seconds": summary["train_seconds"],
        "index_seconds": index_seconds,
        "wall_seconds": time.perf_counter() - start,
    }
    atomic_write_json(out / "metrics.json", metrics)
    print_table(metrics, title=f"quickstart rag  (index: {out / 'index'}, model: {out / 'model'})")
    sample = with_rag[0]
    print(f"\nexample: {questions[0]!r} -> {sample.text!r} (reference {eval_facts[0].obj!r})")
    for s in sample.sources:
        print(f"  [{s.n}] {s.text}  ({s.chunk_id}, score {s.score:.3f})")
    return metrics

