"""A generated maintenance corpus with its own jargon, for the retriever-tuning test and benchmark.

Each document tells how to do one action to one part near another part, in plain words; its title names the
same thing in the domain's jargon (invented words, so no pretrained embedder knows them). Queries are one-line
questions mixing jargon and plain words, phrased unlike the titles: an untuned embedder matches only the
plain words (many documents share them); one tuned on (title -> body) pairs of the corpus learns the jargon.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from mmadapt.io import atomic_write_text

PARTS = ("battery", "pump", "valve", "sensor", "filter", "fan", "cable", "display", "motor", "heater", "switch",
         "belt", "nozzle", "brake", "gear", "lamp", "hinge", "hose", "fuse", "spring", "seal", "chain", "wheel", "panel")
ACTIONS = ("replace", "clean", "inspect", "tighten", "calibrate", "lubricate")
_SYLLABLES = ("zor", "bix", "kel", "vum", "tra", "plo", "qui", "dax", "mer", "fen", "gol", "hyr", "jas", "nop", "ruk",
              "sil", "tev", "wob", "yal", "zen")


@dataclass
class DomainCorpus:
    records: list[dict[str, str]]  # {id, title, text}: the corpus as JSONL records
    queries: list[str]  # one-line questions
    relevant: list[str]  # the record id answering each query


def _jargon(words: tuple[str, ...], rng: random.Random) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for word in words:
        while True:
            term = "".join(rng.sample(_SYLLABLES, 2))
            if term not in used:
                used.add(term)
                out[word] = term
                break
    return out


def make_domain_corpus(n_docs: int = 300, seed: int = 0) -> DomainCorpus:
    """`n_docs` documents, each a distinct (action, part, nearby part), with a jargon title and a query."""
    rng = random.Random(seed)
    jargon = _jargon(PARTS + ACTIONS, rng)
    combos = [(a, p, q) for a in ACTIONS for p in PARTS for q in PARTS if p != q]
    rng.shuffle(combos)
    records, queries, relevant = [], [], []
    for i, (action, part, near) in enumerate(combos[:n_docs]):
        doc_id = f"proc-{i:04d}"
        text = (f"To {action} the {part} that sits next to the {near}, switch the unit off and wait a minute. "
                f"Then {action} the {part} with care, and check that the {near} still works before closing the cover.")
        title = f"{jargon[action]} {jargon[part]} procedure ({jargon[near]} side)"
        records.append({"id": doc_id, "title": title, "text": text})
        queries.append(f"how do I {jargon[action]} a {jargon[part]} by the {near}")
        relevant.append(doc_id)
    return DomainCorpus(records, queries, relevant)


def write_records(path: str | Path, records: list[dict[str, str]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return Path(path)
