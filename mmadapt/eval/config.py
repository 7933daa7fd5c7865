"""The evaluation suite schema: one `SuiteConfig` per `mmadapt eval` run (validated by mmadapt.config.from_dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

KINDS = ("short_answer", "multiple_choice", "generation", "perplexity", "preference", "edits", "retrieval")


@dataclass
class TaskConfig:
    """One task: a JSONL file of items and the kind that scores them (see the README for each kind's fields)."""

    name: str
    kind: Literal["short_answer", "multiple_choice", "generation", "perplexity", "preference", "edits", "retrieval"]
    path: str | None = None  # the JSONL items (edits: optional when `record` is given)
    limit: int | None = None  # score only the first N items (a quick look)
    chat: bool = True  # prompts through the model's chat template; false: raw text continuation
    max_new_tokens: int = 32  # short_answer, generation, retrieval answers
    record: str | None = None  # edits: an edited checkpoint whose recorded requests are re-measured
    index: str | None = None  # retrieval: a RAG index directory (`mmadapt rag build`)
    k: int = 5  # retrieval: passages retrieved (recall@1 and recall@k are reported)
    reference: str | None = None  # preference: the reference model (e.g. the SFT model): DPO's implicit reward margin
    beta: float = 0.1  # preference with a reference: the reward scale (DPO's beta)
    choices: list[str] | None = None  # multiple_choice: options shared by every item (items then need no `choices`)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"task name {self.name!r}: must be non-empty and contain no '/'")
        if self.path is None and not (self.kind == "edits" and self.record):
            raise ValueError(f"task {self.name!r}: path is required (edits: path or record)")
        if self.kind == "retrieval" and not self.index:
            raise ValueError(f"task {self.name!r}: a retrieval task needs index (a RAG index directory)")
        if self.kind != "retrieval" and self.index:
            raise ValueError(f"task {self.name!r}: index is only for kind retrieval")
        if self.kind != "edits" and self.record:
            raise ValueError(f"task {self.name!r}: record is only for kind edits")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"task {self.name!r}: limit must be >= 1")
        if self.reference is not None and self.kind != "preference":
            raise ValueError(f"task {self.name!r}: reference is only for kind preference")
        if self.choices is not None and (self.kind != "multiple_choice" or len(self.choices) < 2):
            raise ValueError(f"task {self.name!r}: choices (two or more) are only for kind multiple_choice")
        if self.k < 1 or self.max_new_tokens < 1:
            raise ValueError(f"task {self.name!r}: k and max_new_tokens must be >= 1")


@dataclass
class SuiteConfig:
    """Tasks, the models to compare (the first is the reference for changes), and how to score."""

    tasks: list[TaskConfig]
    models: list[str] = field(default_factory=list)  # --model adds more after these
    vars: dict[str, Any] = field(default_factory=dict)  # free values for ${vars.x} references (--set vars.x=...)
    batch_size: int = 16
    bootstrap: int = 1000  # resamples for the 95% intervals (0: none)
    seed: int = 0
    inherited_edits: bool = True  # also re-measure edits recorded anywhere in a model's lineage
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tasks: duplicate task names {duplicates}")
        if self.batch_size < 1 or self.bootstrap < 0:
            raise ValueError("batch_size must be >= 1 and bootstrap >= 0")
