"""Retrieval attached to a model: the RAG wrapper (retrieve, cite, generate) and RA-DIT training examples.

`RAGPipeline` wraps any mmadapt model (text or multimodal): it retrieves passages for a question
(or an image), numbers them in the prompt, generates, and returns the answer with its sources.
`radit_records` builds retrieval-augmented SFT conversations (retrieved passages plus random
distractors in the prompt, the answer as the target), trained with the core trainer
(`data.retrieval` in a run config, or written to JSONL with `mmadapt rag radit`).
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from mmadapt.config import from_dict
from mmadapt.errors import ConfigError, DataError
from mmadapt.rag.meta import Hit
from mmadapt.rag.retrieve import RetrieveConfig, Retriever

_CITE = re.compile(r"\[(\d+)\]")


@dataclass
class PromptConfig:
    """How retrieved passages and the question are laid out in the user turn."""

    instruction: str = "Answer the question using the numbered passages below; cite the passages you use like [1]."
    passage: str = "[{n}] {text}"  # fields: n, text, source, page, citation (source and page)
    question: str = "Question: {question}"
    no_passages: str = ""  # what stands in for the passages when none are given (e.g. "No passages.")
    max_passage_chars: int = 1200
    system: str | None = None


@dataclass
class Source:
    """A passage the answer was given, with its number in the prompt."""

    n: int
    chunk_id: str
    source: str
    page: int | None
    score: float
    text: str
    doc_id: str = ""  # the record's id (a file's path for a plain file)
    title: str | None = None  # the document's title, when it has one (HTML, docx, a record's `title`)

    @property
    def label(self) -> str:
        """What a reader should see: the title or the record id, with the page of a PDF."""
        name = self.title or self.doc_id or self.source
        return f"{name}, page {self.page}" if self.page else name


@dataclass
class Answer:
    text: str
    sources: list[Source]  # every passage in the prompt, numbered as there
    cited: list[int] = field(default_factory=list)  # the numbers the answer cites, e.g. [2] -> 2
    messages: list[dict[str, str]] = field(default_factory=list)  # the prompt the model was given

    def cited_sources(self) -> list[Source]:
        return [s for s in self.sources if s.n in self.cited]


def format_passage(n: int, hit: Hit, config: PromptConfig) -> str:
    text = hit.text if hit.modality == "text" else f"(image {hit.source})"
    text = " ".join(text.split())
    if len(text) > config.max_passage_chars:
        text = text[: config.max_passage_chars].rsplit(" ", 1)[0] + " ..."
    return config.passage.format(n=n, text=text, source=hit.source, page=hit.page or "", citation=hit.citation())


def build_prompt(question: str, hits: Sequence[Hit], config: PromptConfig, media_placeholder: str | None = None) -> str:
    """The user turn: [media placeholder], instruction, numbered passages, question (blank parts left out)."""
    passages = "\n".join(format_passage(n, hit, config) for n, hit in enumerate(hits, 1)) or config.no_passages
    parts = [media_placeholder or "", config.instruction if hits else "", passages, config.question.format(question=question)]
    return "\n".join(p for p in parts if p)


def messages_for(question: str, hits: Sequence[Hit], config: PromptConfig, media_placeholder: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": config.system}] if config.system else []
    return messages + [{"role": "user", "content": build_prompt(question, hits, config, media_placeholder)}]


def strip_placeholders(text: str) -> str:
    """`text` without media placeholders (`<image>` ...): they mean nothing to a retriever."""
    from mmadapt.model import PLACEHOLDERS

    if not any(p in text for p in PLACEHOLDERS.values()):
        return text
    for placeholder in PLACEHOLDERS.values():
        text = text.replace(placeholder, " ")
    return " ".join(text.split())


def media_placeholders(record: dict[str, Any], question: str, where: str) -> str | None:
    """Placeholders for the media a QA record carries that its question does not place itself (one per item)."""
    from mmadapt.data.conversations import media_list
    from mmadapt.model import PLACEHOLDERS

    lead = "".join(placeholder * len(media_list(record, modality, where))
                   for modality, placeholder in PLACEHOLDERS.items() if placeholder not in question)
    return lead or None


def cited_numbers(text: str, n_passages: int) -> list[int]:
    """Passage numbers cited as [n] in `text` (in order, once each, only numbers that were given)."""
    return list(dict.fromkeys(int(m) for m in _CITE.findall(text) if 1 <= int(m) <= n_passages))


def training_retrieval(model_dir: str | Path) -> dict[str, Any] | None:
    """The `data.retrieval` section a model was trained with (the run config saved with it, the last stage's
    where stages set one); None for a model not trained with retrieval."""
    import yaml

    file = Path(model_dir) / "config.yaml"
    if not file.is_file():
        return None
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: unreadable run config: {e}") from None
    if not isinstance(config, dict):
        return None
    retrieval = (config.get("data") or {}).get("retrieval") if isinstance(config.get("data"), dict) else None
    for stage in config.get("stages") or []:
        data = stage.get("data") if isinstance(stage, dict) else None
        if isinstance(data, dict) and isinstance(data.get("retrieval"), dict):
            retrieval = data["retrieval"]
    return retrieval if isinstance(retrieval, dict) else None


def training_prompt(model_dir: str | Path) -> PromptConfig | None:
    """The prompt layout a model was trained with retrieval in (`data.retrieval.prompt` of its saved run config);
    None for a model not trained with retrieval."""
    retrieval = training_retrieval(model_dir)
    if retrieval is None:
        return None
    where = f"{Path(model_dir) / 'config.yaml'}: data.retrieval.prompt"
    return from_dict(PromptConfig, dict(retrieval.get("prompt") or {}), path=where)


def training_k(model_dir: str | Path) -> int | None:
    """How many passages were retrieved for each training prompt (`data.retrieval.k` of the saved run config, when
    recorded; distractors are a training device, not retrieved at answer time); None when the config does not say."""
    retrieval = training_retrieval(model_dir) or {}
    k = retrieval.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return None
    return k


class RAGPipeline:
    """Retrieve, format with numbered citations, generate: `ask(question, image=None) -> Answer`."""

    def __init__(self, model: Any, retriever: Retriever, prompt: PromptConfig | None = None, max_new_tokens: int = 64) -> None:
        self.model = model
        self.retriever = retriever
        self.prompt = prompt or PromptConfig()
        self.max_new_tokens = max_new_tokens

    def ask(self, question: str, image: Any = None, k: int | None = None, filters: dict[str, Any] | None = None,
            retrieve: bool = True) -> Answer:
        """Answer one question; `image` (a path) is both a retrieval query and, for a model with an image
        encoder, part of the prompt. `retrieve=False` asks the bare model (for comparison)."""
        return self.ask_batch([question], [image] if image is not None else None, k, filters, retrieve)[0]

    def ask_batch(self, questions: Sequence[str], images: Sequence[Any] | None = None, k: int | None = None,
                  filters: dict[str, Any] | None = None, retrieve: bool = True) -> list[Answer]:
        from mmadapt.generate import generate_batch
        from mmadapt.model import PLACEHOLDERS

        if images is not None and len(images) != len(questions):
            raise DataError(f"{len(questions)} questions but {len(images)} images")
        queries = [strip_placeholders(q) for q in questions]
        text_queries = queries if any(q.strip() for q in queries) else None
        if retrieve:
            all_hits = self.retriever.retrieve_batch(text_queries, k, filters, images)
        else:
            all_hits = [[] for _ in questions]
        prompts = []
        for i, (question, hits) in enumerate(zip(questions, all_hits)):
            image = images[i] if images is not None else None
            see_image = image is not None and "image" in getattr(self.model, "encoders", {})
            media = {"image": [image]} if see_image else {}
            # the placeholder leads the turn, as in RA-DIT training, unless the question places it itself
            lead = PLACEHOLDERS["image"] if see_image and PLACEHOLDERS["image"] not in question else None
            prompts.append((messages_for(question, hits, self.prompt, lead), media))
        texts = generate_batch(self.model, prompts, max_new_tokens=self.max_new_tokens)
        answers = []
        for text, hits, (messages, _) in zip(texts, all_hits, prompts):
            sources = [Source(n, h.chunk_id, h.source, h.page, h.score, h.text, h.doc_id,
                              h.metadata.get("title") if isinstance(h.metadata.get("title"), str) else None)
                       for n, h in enumerate(hits, 1)]
            answers.append(Answer(text, sources, cited_numbers(text, len(hits)), messages))
        return answers


# ------------------------------------------------------------------------------ RA-DIT examples
@dataclass
class RetrievalDataConfig:
    """`data.retrieval` of a run config: QA records become retrieval-augmented conversations."""

    index: str | None = None  # a RAG index directory; None: data.train already holds RA-DIT conversations
    # (e.g. from `mmadapt rag radit`) and this section only records how their prompts were laid out
    k: int = 3  # retrieved passages per prompt
    distractors: int = 1  # random passages added to them (RA-DIT: the model learns to ignore what does not answer)
    ensure_relevant: bool = True  # put a relevant passage in when retrieval missed it (else the target is unanswerable)
    shuffle: bool = True  # passage order shuffled, so the answer's position carries no signal
    repeats: int = 1  # examples per QA record, each with its own distractors and passage order
    question_key: str = "question"
    answer_key: str = "answer"
    relevant_key: str = "relevant"  # chunk or document ids of the passages that answer (optional)
    mode: Literal["dense", "lexical", "hybrid"] = "dense"
    seed: int = 0
    prompt: dict[str, Any] = field(default_factory=dict)  # PromptConfig fields

    def __post_init__(self) -> None:
        if self.k < 0 or self.distractors < 0 or self.k + self.distractors < 1:
            raise ConfigError(f"k and distractors must be >= 0 and not both 0, got k={self.k}, "
                              f"distractors={self.distractors}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")


def radit_records(
    records: Sequence[tuple[str, dict[str, Any]]], retriever: Retriever, config: RetrievalDataConfig,
) -> list[tuple[str, dict[str, Any]]]:
    """QA records -> (where, conversation record) with retrieved passages and distractors in the prompt.

    Each QA record has `question`, `answer` and optionally `relevant` (ids); a record missing them
    raises DataError naming its file and line.
    """
    rng = random.Random(config.seed)
    prompt = from_dict(PromptConfig, config.prompt, path="data.retrieval.prompt")
    questions, answers, relevant = [], [], []
    for where, record in records:
        q, a = record.get(config.question_key), record.get(config.answer_key)
        if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
            raise DataError(f"{where}: a retrieval-augmented record needs non-empty strings "
                            f"{config.question_key!r} and {config.answer_key!r}")
        rel = record.get(config.relevant_key) or []
        if not isinstance(rel, list) or not all(isinstance(r, str) for r in rel):
            raise DataError(f"{where}: {config.relevant_key!r} must be a list of chunk or document ids")
        questions.append(q)
        answers.append(a)
        relevant.append(set(rel))
    index = retriever.index
    gold_by_key = _passages_by_key(index, set().union(*relevant))
    all_ids = index.chunk_ids() if config.distractors else []
    queries = [strip_placeholders(q) for q in questions]
    retrieved = retriever.retrieve_batch(queries, k=max(config.k, 1)) if config.k else [[] for _ in questions]
    out = []
    for (where, record), q, a, rel, found in zip(records, questions, answers, relevant, retrieved):
        missing = sorted(rel - gold_by_key.keys())
        if missing:
            raise DataError(f"{where}: {config.relevant_key!r} names ids that are not in the index {index.final_path}: "
                            f"{missing[:5]} (use chunk ids like 'DOC#0' or document ids)")
        gold = {h.chunk_id: h for key in sorted(rel) for h in gold_by_key[key]}
        found = list(found[: config.k])
        if gold and config.ensure_relevant and not any(h.chunk_id in gold for h in found):
            found = (found[:-1] if len(found) >= max(config.k, 1) else found) + [min(gold.values(), key=lambda h: h.row)]
        lead = media_placeholders(record, q, where)
        for copy in range(config.repeats):  # fresh distractors and order for every copy
            hits = list(found)
            taken = {h.chunk_id for h in hits} | set(gold)  # a distractor never answers the question
            pool = [c for c in rng.sample(all_ids, min(len(all_ids), config.distractors + len(taken))) if c not in taken]
            hits += index.get(pool[: config.distractors])
            if config.shuffle:
                rng.shuffle(hits)
            rid = str(record.get("id", where))
            conversation = {
                "id": rid if config.repeats == 1 else f"{rid}/{copy}",
                "conversations": [{"from": "human", "value": build_prompt(q, hits, prompt, lead)}, {"from": "gpt", "value": a}],
            }
            for modality in ("image", "audio", "video"):
                if modality in record:
                    conversation[modality] = record[modality]
            out.append((where, conversation))
    return out


def _passages_by_key(index: Any, keys: set[str]) -> dict[str, list[Hit]]:
    """{chunk id or document id: its passages} for the ids in `keys` that the index holds."""
    by_key: dict[str, list[Hit]] = {}
    for hit in index.get(chunk_ids=sorted(keys), doc_ids=sorted(keys)):
        for key in {hit.chunk_id, hit.doc_id} & keys:
            by_key.setdefault(key, []).append(hit)
    return by_key


def load_retrieval_conversations(path: str, spec: Any, data_cfg: Any, stats_prefix: str) -> tuple[list, dict[str, float]]:
    """The data loader for `data.retrieval`: QA records -> RA-DIT conversations -> tokenised examples
    (same signature as the core's `load_conversations`)."""
    from mmadapt.data.conversations import ExampleBuilder
    from mmadapt.data.records import read_records
    from mmadapt.rag.store import RagIndex

    config = from_dict(RetrievalDataConfig, dict(data_cfg.retrieval or {}), path="data.retrieval")
    from_dict(PromptConfig, config.prompt, path="data.retrieval.prompt")  # a typo fails before training, not at ask
    if config.index is None:  # conversations built already: the prompt layout is recorded with the model
        from mmadapt.data.loading import load_conversations

        return load_conversations(path, spec, dataclasses.replace(data_cfg, retrieval=None), stats_prefix)
    if not Path(config.index).is_dir():
        raise ConfigError(f"data.retrieval.index: {config.index} is not a directory (build one with `mmadapt rag build`)")
    retriever = Retriever(RagIndex.open(config.index), RetrieveConfig(k=max(config.k, 1), mode=config.mode))  # type: ignore[arg-type]
    records = radit_records(read_records(path), retriever, config)
    builder = ExampleBuilder(spec, dataclasses.replace(data_cfg, format="conversations"), path)
    examples = builder.build(records)
    return examples, builder.stats.as_metrics(stats_prefix)
