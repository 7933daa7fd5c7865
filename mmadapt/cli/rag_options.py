"""What `rag query`, `rag ask` and `rag eval` share: the retrieval flags, metadata filters and the retriever they
describe."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from mmadapt.errors import DataError


def parse_filters(items: list[str]) -> dict[str, Any]:
    """`key=value` (value read as YAML: numbers, lists `[a, b]`, operators `{gte: 3}`)."""
    filters: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DataError(f"--filter {item!r}: expected key=value, e.g. source=docs/a.txt or 'year={{gte: 2020}}'")
        try:
            filters[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise DataError(f"--filter {item!r}: cannot read the value: {e}") from e
    return filters


def retriever(args: argparse.Namespace) -> Any:
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever
    from mmadapt.rag.store import RagIndex

    index = RagIndex.open(args.index, embedder=None)
    return Retriever(index, RetrieveConfig(k=args.k, mode=args.mode, reranker=args.rerank, candidates=args.candidates,
                                           rerank_weight=args.rerank_weight, lexical_weight=args.lexical_weight))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def retrieval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=positive_int, default=5, help="passages to return (default 5)")
    p.add_argument("--mode", choices=["dense", "lexical", "hybrid"], default="dense")
    p.add_argument("--rerank", metavar="MODEL", help="a trained cross-encoder (hub id or path, e.g. OUT/reranker of "
                   "`rag tune`) to re-rank the candidates")
    p.add_argument("--candidates", type=positive_int, default=50,
                   help="passages each ranking contributes before fusion or re-ranking (default 50)")
    p.add_argument("--rerank-weight", type=float, metavar="W", help="0..1: how far the reranker's order replaces "
                   "the first stage's (1: alone; default: the weight `rag tune` calibrated for it, else 1)")
    p.add_argument("--lexical-weight", type=float, metavar="W", help="0..1: BM25's share of --mode hybrid fusion "
                   "(0.5: plain reciprocal-rank fusion; default: the weight `rag tune` calibrated for the index's "
                   "embedder, else 0.5)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata filter, e.g. source=docs/a.txt, 'page=[1, 2]', 'year={gte: 2020}' (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
