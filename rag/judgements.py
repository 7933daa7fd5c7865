"""Judged retrieval queries (`mmadapt rag eval`): the query texts and, for each, the ids of its relevant passages."""

from __future__ import annotations

from pathlib import Path

from mmadapt.data.records import read_records
from mmadapt.errors import DataError


def read_judgements(queries_path: str, relevant_path: str | None) -> tuple[list[str], list[set[str]]]:
    """Queries and their relevant ids: one JSONL of {query, relevant: [ids]}, or JSONL {id, query} plus a
    relevance file (JSONL {id, relevant} or TSV lines `query_id<TAB>relevant_id`)."""
    records = read_records(queries_path)
    if relevant_path is None:
        queries, relevant = [], []
        for where, r in records:
            if not isinstance(r.get("query"), str) or not isinstance(r.get("relevant"), list) or not r["relevant"]:
                raise DataError(f"{where}: expected {{\"query\": str, \"relevant\": [ids]}} (or pass a separate relevance file)")
            queries.append(r["query"])
            relevant.append({str(x) for x in r["relevant"]})
        return queries, relevant
    judged: dict[str, set[str]] = {}
    path = Path(relevant_path)
    if not path.is_file():
        raise DataError(f"relevance file not found: {path}")
    if path.suffix in (".jsonl", ".json"):
        for where, r in read_records(path):
            qid = r.get("id", r.get("query_id"))
            if qid is None or not isinstance(r.get("relevant"), list):
                raise DataError(f"{where}: expected {{\"id\": query id, \"relevant\": [ids]}}")
            judged.setdefault(str(qid), set()).update(str(x) for x in r["relevant"])
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                parts = line.split("\t")
                if len(parts) < 2:
                    raise DataError(f"{path}:{n}: expected `query_id<TAB>relevant_id`")
                judged.setdefault(parts[0].strip(), set()).add(parts[1].strip())
    queries, relevant = [], []
    for where, r in records:
        qid, text = r.get("id"), r.get("query")
        if qid is None or not isinstance(text, str):
            raise DataError(f"{where}: expected {{\"id\": ..., \"query\": str}}")
        if str(qid) not in judged:
            raise DataError(f"{where}: query {qid!r} has no relevant ids in {path}")
        queries.append(text)
        relevant.append(judged[str(qid)])
    return queries, relevant
