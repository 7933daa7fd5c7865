"""Task kinds: each reads its JSONL items, calls the model in batches and returns metrics with per-item values.

A kind is a function `(model, task, items, root, batch_size) -> Scored`, registered by name in the registry's
`eval_task` table.
Per-item values (or per-item records for corpus-level metrics such as BLEU) feed the bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError
from mmadapt.eval import metrics as M
from mmadapt.eval.config import TaskConfig
from mmadapt.eval.scoring import LLRequest, generate_chat, generate_raw, loglikelihood, rolling_loglikelihood

MODALITIES = ("image", "audio", "video")


@dataclass
class Scored:
    """A task's result on one model: `metrics` name -> value; `samples` name -> per-item values (mean metrics)
    or per-item records with the `corpus` statistic that turns a resample of them into the metric."""

    metrics: dict[str, float]
    samples: dict[str, list] = field(default_factory=dict)
    corpus: dict[str, Callable[[list], float]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few predictions for the report


def _field(record: dict[str, Any], where: str, *names: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    raise DataError(f"{where}: missing field {' or '.join(map(repr, names))}; record keys: {sorted(record)}")


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {name} must be a string, got {type(value).__name__}")
    return value


def _prompt(model: Any, record: dict[str, Any], where: str, root: Path) -> tuple[list[dict[str, str]], dict[str, list]]:
    """(user messages, media paths) of a {question, image?/audio?/video?} record; placeholders lead the turn
    when the question does not place them itself."""
    from mmadapt.data.conversations import media_list, resolve_media
    from mmadapt.model import PLACEHOLDERS

    question = _text(_field(record, where, "question", "prompt"), where, "question")
    media: dict[str, list] = {}
    for modality in MODALITIES:
        items = media_list(record, modality, where)
        if not items:
            continue
        if modality not in getattr(model, "modalities", getattr(model, "encoders", {})):
            raise DataError(f"{where}: has {modality} but the model has no {modality} encoder")
        media[modality] = [resolve_media(i, root, where, modality) for i in items]
        missing = len(items) - question.count(PLACEHOLDERS[modality])
        if missing > 0:
            question = "\n".join([PLACEHOLDERS[modality]] * missing + [question])
    return [{"role": "user", "content": question}], media


def _references(record: dict[str, Any], where: str, *names: str) -> list[str]:
    value = _field(record, where, *names)
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise DataError(f"{where}: {names[0]} must be a string or a non-empty list of strings")
    return refs


def _generate(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int,
              ref_names: tuple[str, ...]) -> tuple[list[str], list[list[str]], list[str]]:
    """(predictions, references per item, prompt texts) for records in {question, answer} or conversation form."""
    from mmadapt.generate import split_record

    prompts, refs = [], []
    for where, record in items:
        if "conversations" in record:
            messages, media, reference = split_record(model, where, record, root)
            prompts.append((messages, media))
            refs.append([reference])
        else:
            prompts.append(_prompt(model, record, where, root))
            refs.append(_references(record, where, *ref_names))
    if task.chat:
        predictions = generate_chat(model, prompts, batch_size, task.max_new_tokens, desc=task.name)
    else:
        if any(media for _, media in prompts):
            raise DataError(f"task {task.name}: media items need chat: true")
        predictions = generate_raw(model, [m[-1]["content"] for m, _ in prompts], [["\n"]] * len(prompts), batch_size,
                                   task.max_new_tokens)
    return predictions, refs, [m[-1]["content"] for m, _ in prompts]


def _examples(prompts: list[str], predictions: list[str], refs: list[Any], n: int = 3) -> list[dict[str, Any]]:
    return [{"prompt": p, "prediction": o, "reference": r} for p, o, r in list(zip(prompts, predictions, refs))[:n]]


def short_answer(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    predictions, refs, prompts = _generate(model, task, items, root, batch_size, ("answers", "answer"))
    samples = {
        "exact_match": [float(any(p.strip() == r.strip() for r in rs)) for p, rs in zip(predictions, refs)],
        "normalized_match": [M.answer_correct(p, rs) for p, rs in zip(predictions, refs)],
        "anls": [M.anls(p, rs) for p, rs in zip(predictions, refs)],
    }
    return Scored({k: M.mean(v) for k, v in samples.items()}, samples, examples=_examples(prompts, predictions, refs))


def generation(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    predictions, refs, prompts = _generate(model, task, items, root, batch_size, ("references", "reference", "answer"))
    pairs = list(zip(predictions, refs))
    corpus = {"bleu": lambda ps: M.bleu([p for p, _ in ps], [r for _, r in ps]),
              "chrf": lambda ps: M.chrf([p for p, _ in ps], [r for _, r in ps])}
    rouge = M.rouge_l(predictions, refs)
    metrics = {"bleu": corpus["bleu"](pairs), "chrf": corpus["chrf"](pairs), "rouge_l": M.mean(rouge)}
    return Scored(metrics, {"bleu": pairs, "chrf": pairs, "rouge_l": rouge}, corpus,
                  examples=_examples(prompts, predictions, refs))


def multiple_choice(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    requests, spans, gold = [], [], []
    from mmadapt.generate import split_record

    for where, record in items:
        if "conversations" in record:  # a VQA record: its answer is one of the task's shared choices
            messages, media, answer = split_record(model, where, record, root)
            record = {"choices": task.choices, "answer": answer}
        else:
            messages, media = _prompt(model, record, where, root)
        choices = record.get("choices", task.choices)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: choices (in the item or the task) must be a list of at least two strings")
        answer = _field(record, where, "answer")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(f"{where}: answer {answer!r} must be an index into choices (0-{len(choices) - 1}) or one of them")
        spans.append((len(requests), len(choices)))
        gold.append(answer)
        for choice in choices:
            if task.chat:
                requests.append(LLRequest("", choice, messages, media))
            elif media:
                raise DataError(f"{where}: media items need chat: true")
            else:
                requests.append(LLRequest(messages[0]["content"], " " + choice))
    scores = loglikelihood(model, requests, batch_size, desc=task.name)
    acc, acc_norm = [], []
    for (first, n), answer in zip(spans, gold):
        logps = [scores[first + j][0] for j in range(n)]
        lengths = [max(len(requests[first + j].continuation), 1) for j in range(n)]
        acc.append(float(max(range(n), key=lambda j: logps[j]) == answer))
        acc_norm.append(float(max(range(n), key=lambda j: logps[j] / lengths[j]) == answer))
    return Scored({"accuracy": M.mean(acc), "accuracy_norm": M.mean(acc_norm)}, {"accuracy": acc, "accuracy_norm": acc_norm})


def perplexity(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    texts = [_text(_field(r, w, "text"), w, "text") for w, r in items]
    scored = rolling_loglikelihood(model, texts, batch_size)
    pairs = [(-logp, n) for logp, n in scored]

    def ppl(ps: list) -> float:
        return M.perplexity([a for a, _ in ps], [b for _, b in ps])

    return Scored({"perplexity": ppl(pairs), "tokens": float(sum(n for _, n in pairs))},
                  {"perplexity": pairs}, {"perplexity": ppl})


def preference(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    """Chosen vs rejected by log-likelihood (sum over the answer's tokens); with a `reference` model, by DPO's
    implicit reward beta * (log p_model - log p_reference), so the margin is the reward margin DPO trains."""
    requests = []
    for where, record in items:
        messages, media = _prompt(model, record, where, root)
        for name in ("chosen", "rejected"):
            answer = _text(_field(record, where, name), where, name)
            requests.append(LLRequest("", answer, messages, media) if task.chat
                            else LLRequest(messages[0]["content"], " " + answer))
    logps = [s[0] for s in loglikelihood(model, requests, batch_size, desc=task.name)]
    if task.reference:  # DPO's implicit reward: beta * (log pi - log pi_ref), compared between chosen and rejected
        from mmadapt.eval.scoring import load_eval_model

        ref = [s[0] for s in loglikelihood(load_eval_model(task.reference), requests, batch_size, desc="reference")]
        logps = [task.beta * (a - b) for a, b in zip(logps, ref)]
    wins, margins = M.preference(logps[0::2], logps[1::2])
    return Scored({"preference_accuracy": M.mean(wins), "reward_margin": M.mean(margins)},
                  {"preference_accuracy": wins, "reward_margin": margins})


def edits(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    """Efficacy, paraphrase, neighbourhood, fluency through editing/evaluate.py; portability here: the share of
    `portability` prompts ({prompt, target}: a consequence of the new fact) whose target the model completes greedily."""
    from mmadapt.editing.evaluate import evaluate
    from mmadapt.editing.requests import parse_request

    requests, portability = [], []
    for where, record in items:
        fields = {k: v for k, v in record.items() if k not in ("portability", "where")}
        requests.append(parse_request(fields, record.get("where", where)))
        for n, entry in enumerate(record.get("portability") or []):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("prompt", "target")):
                raise DataError(f"{where}: portability[{n}] must be {{prompt: str, target: str}}")
            portability.append((len(requests) - 1, entry["prompt"], entry["target"]))
    missing = [r.where for r in requests if r.target_true is None]
    if missing:
        raise DataError(f"{missing[0]}: no target_true (the old answer); give it, or name the edited checkpoint "
                        "as the task's record (its requests carry the base model's answers)")
    llm = getattr(model, "llm", model)
    _, rows = evaluate(llm, model.tokenizer, requests, batch_size=batch_size)
    samples = {key: [row[key] for row in rows if key in row] for key in ("efficacy", "paraphrase", "neighborhood", "fluency")}
    if portability:
        scored = loglikelihood(model, [LLRequest(p, " " + t) for _, p, t in portability], batch_size)
        samples["portability"] = [float(greedy) for _, _, greedy in scored]
    samples = {k: v for k, v in samples.items() if v}
    return Scored({k: M.mean(v) for k, v in samples.items()} | {"n_requests": float(len(requests))}, samples)


def retrieval(model: Any, task: TaskConfig, items: list, root: Path, batch_size: int) -> Scored:
    """recall@1, recall@k and MRR of the index; answer accuracy with and without retrieval; citation
    correctness (an answer cites a passage that contains the reference answer)."""
    from mmadapt.rag.augment import RAGPipeline
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever, hit_keys
    from mmadapt.rag.store import RagIndex

    questions, answers, relevant = [], [], []
    for where, record in items:
        questions.append(_text(_field(record, where, "question"), where, "question"))
        answers.append(_references(record, where, "answers", "answer"))
        rel = _field(record, where, "relevant")
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) for r in rel):
            raise DataError(f"{where}: relevant must be a non-empty list of chunk or document ids")
        relevant.append(set(rel))
    retriever = Retriever(RagIndex.open(task.index), RetrieveConfig(k=task.k))
    hits = retriever.retrieve_batch(questions, k=task.k)
    ranked = [[hit_keys(h) for h in row] for row in hits]
    samples: dict[str, list] = {
        "recall_at_1": [M.recall_at_k(r, rel, 1) for r, rel in zip(ranked, relevant)],
        f"recall_at_{task.k}": [M.recall_at_k(r, rel, task.k) for r, rel in zip(ranked, relevant)],
        "mrr": [M.reciprocal_rank(r, rel) for r, rel in zip(ranked, relevant)],
    }
    pipeline = RAGPipeline(model, retriever, max_new_tokens=task.max_new_tokens)
    with_rag, without = [], []
    for start in range(0, len(questions), batch_size):
        with_rag += pipeline.ask_batch(questions[start:start + batch_size])
        without += pipeline.ask_batch(questions[start:start + batch_size], retrieve=False)
    samples["accuracy_with_rag"] = [M.answer_correct(a.text, r) for a, r in zip(with_rag, answers)]
    samples["accuracy_without_rag"] = [M.answer_correct(a.text, r) for a, r in zip(without, answers)]
    samples["citation_correct"] = [max((M.citation_correct([s.text for s in a.cited_sources()], ref) for ref in r), default=0.0)
                                   for a, r in zip(with_rag, answers)]
    return Scored({k: M.mean(v) for k, v in samples.items()}, samples,
                  examples=_examples(questions, [a.text for a in with_rag], answers))


LOWER_IS_BETTER = {"perplexity"}
