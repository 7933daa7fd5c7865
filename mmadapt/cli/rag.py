"""`mmadapt rag build|add|update|tune|delete|query|ask|eval|radit|info`: thin entry points over the rag library."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from mmadapt.cli.rag_options import parse_filters, positive_int, retrieval_flags, retriever
from mmadapt.errors import DataError

logger = logging.getLogger(__name__)


def _build_config(args: argparse.Namespace) -> Any:
    from mmadapt.config import load
    from mmadapt.rag.store import RagConfig

    overrides = list(args.set)
    for flag, key in (("embedder", "embedder.name"), ("embedder_type", "embedder.type"), ("kind", "index.kind"),
                      ("metric", "index.metric"), ("chunk_size", "chunk.size"), ("overlap", "chunk.overlap"),
                      ("backend", "index.backend"), ("uri", "index.uri"), ("collection", "index.collection")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load(RagConfig, args.config if args.config else {}, overrides)


def _print_report(report: Any, ingest_report: Any) -> None:
    print(ingest_report.summary())
    print(f"{report.added} passages added, {len(report.skipped)} skipped")
    for what, reason in report.skipped[:50]:
        print(f"  skipped {what}: {reason}")
    if len(report.skipped) > 50:
        print(f"  ... and {len(report.skipped) - 50} more")


def _print_outcome(index: Any, report: Any, ingested: Any) -> int:
    _print_report(report, ingested)
    print(json.dumps(index.stats(), indent=2))
    return 0


def _ingested(inputs: list[str], config: Any, verb: str) -> Any:
    """The ingested inputs; nothing to index is an error that shows what the loaders skipped and why."""
    from mmadapt.rag.ingest import ingest

    ingested = ingest(inputs, config)
    if not ingested.documents:
        raise DataError(f"nothing to {verb} from {', '.join(inputs)}:\n{ingested.summary()}")
    return ingested


def build(args: argparse.Namespace) -> int:
    from mmadapt.rag.store import RagIndex

    config = _build_config(args)
    ingested = _ingested(args.inputs, config.ingest, "index")
    index, report = RagIndex.build(args.out, ingested.documents, config, overwrite=args.overwrite)
    return _print_outcome(index, report, ingested)


def add(args: argparse.Namespace) -> int:
    from mmadapt.rag.store import RagIndex

    index = RagIndex.open(args.index)
    ingested = _ingested(args.inputs, index.config.ingest, "add")
    return _print_outcome(index, index.add_documents(ingested.documents, replace=args.replace), ingested)


def update(args: argparse.Namespace) -> int:
    from mmadapt.rag.store import RagIndex

    index = RagIndex.open(args.index)
    ingested = _ingested(args.inputs, index.config.ingest, "update")
    report = index.update_documents(ingested.documents)
    print(ingested.summary())
    print(f"{report.changed} passages changed ({report.embedded} embedded), {report.added} added, {report.removed} "
          f"removed, {report.unchanged} unchanged")
    print(json.dumps(index.stats(), indent=2))
    return 0


def tune_cli(args: argparse.Namespace) -> int:
    from mmadapt.rag.store import RagIndex
    from mmadapt.rag.tune import TuneConfig, tune

    config = TuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, hard_negatives=args.hard_negatives,
                        reranker=not args.no_reranker, reranker_epochs=args.reranker_epochs,
                        reranker_negatives=args.reranker_negatives, reranker_loss=args.reranker_loss,
                        reranker_sentences=args.reranker_sentences, reranker_titles=not args.reranker_no_titles,
                        questions=args.questions, reembed=not args.no_reembed,
                        eval_fraction=args.eval_fraction, seed=args.seed)
    report = tune(RagIndex.open(args.index), args.out, config, overwrite=args.overwrite)
    print(f"pairs: {report.pairs}")
    for key, value in report.metrics.items():
        print(f"{key:<28} {value:.4f}")
    print(f"embedder: {report.embedder}" + ("" if args.no_reembed else f" (now {args.index}'s embedder)"))
    if report.reranker:
        print(f"reranker: {report.reranker} (use it with --rerank)")
    return 0


def delete(args: argparse.Namespace) -> int:
    from mmadapt.rag.store import RagIndex

    if not (args.id or args.source or args.doc):
        raise DataError("rag delete: name what to delete with --id, --source or --doc")
    index = RagIndex.open(args.index)
    n = index.delete(chunk_ids=args.id or [], sources=args.source or [], doc_ids=args.doc or [])
    if not n:
        named = [f"--{flag} {v}" for flag in ("id", "source", "doc") for v in getattr(args, flag) or []]
        raise DataError(f"{args.index}: no passage matches {', '.join(named)} (`mmadapt rag query --json` shows the "
                        "chunk_id, source and doc_id of passages)")
    print(f"deleted {n} passages; {len(index)} remain")
    return 0


def query(args: argparse.Namespace) -> int:
    if not args.text and not args.image:
        raise DataError("rag query: give query text, --image PATH, or both")
    if args.image and not Path(args.image).is_file():
        raise DataError(f"--image: file not found: {args.image}")
    hits = retriever(args).retrieve(args.text, filters=parse_filters(args.filter), image=args.image)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2, default=str))
        return 0
    for rank, hit in enumerate(hits, 1):
        text = " ".join(hit.text.split())
        print(f"{rank:>2}. {hit.score:8.4f}  {hit.chunk_id}  ({hit.citation()})\n    {text[:300]}")
    if not hits:
        print("no passages matched")
    return 0


def evaluate_cli(args: argparse.Namespace) -> int:
    from mmadapt.rag.retrieve import evaluate

    from mmadapt.rag.judgements import read_judgements

    queries, relevant = read_judgements(args.queries, args.relevant)
    metrics = evaluate(retriever(args), queries, relevant, ks=args.at, filters=parse_filters(args.filter))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            print(f"{key:<14} {value:.4f}")
    return 0


def radit(args: argparse.Namespace) -> int:
    from mmadapt.data.records import read_records
    from mmadapt.io import atomic_write_text
    from mmadapt.rag.augment import RetrievalDataConfig, radit_records
    from mmadapt.rag.retrieve import RetrieveConfig, Retriever
    from mmadapt.rag.store import RagIndex

    config = RetrievalDataConfig(index=args.index, k=args.k, distractors=args.distractors, mode=args.mode, seed=args.seed)
    retriever = Retriever(RagIndex.open(args.index), RetrieveConfig(k=max(args.k, 1), mode=args.mode))
    records = radit_records(read_records(args.qa), retriever, config)
    atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for _, r in records))
    print(f"wrote {len(records)} retrieval-augmented conversations to {args.out} (train them with `mmadapt train`)")
    return 0


def info(args: argparse.Namespace) -> int:
    from mmadapt.rag.store import RagIndex

    index = RagIndex.open(args.index)
    print(json.dumps(index.stats(), indent=2))
    if args.verify:
        from mmadapt.lineage import verify

        problems = verify(args.index) + index.check_vectors()
        print("verify: OK" if not problems else "verify: FAILED\n  " + "\n  ".join(problems))
        return 1 if problems else 0
    return 0


def _releasing(command: Any) -> Any:
    """A CLI command that, once done, stops the milvus-lite servers it started: milvus-lite lets one process at a
    time open a database, and a command (even run in-process) must not keep it from the next one."""

    def run(args: argparse.Namespace) -> int:
        from mmadapt.rag.backends.milvus import lite_servers, release_lite

        before = lite_servers()
        try:
            return command(args)
        finally:
            for uri in lite_servers() - before:
                release_lite(uri)

    return run


def add_cli(sub: argparse._SubParsersAction) -> None:
    from mmadapt.cli.rag_ask import ask

    rag = sub.add_parser("rag", help="build, update and query retrieval indices; answer with citations")
    cmds = rag.add_subparsers(dest="rag_command", metavar="ACTION", required=True)

    p = cmds.add_parser("build", help="ingest files and build a new index directory")
    p.add_argument("inputs", nargs="+", help="files or directories (txt, md, html, pdf, jsonl, images)")
    p.add_argument("--out", required=True, help="the index directory to create")
    p.add_argument("--config", help="a YAML with embedder / chunk / index / ingest sections (examples/rag_build.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--embedder", help="sentence-transformers id or path (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--embedder-type", choices=["sentence-transformers", "open_clip"])
    p.add_argument("--kind", choices=["auto", "flat", "hnsw", "ivfpq"])
    p.add_argument("--metric", choices=["ip", "l2"])
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    p.add_argument("--backend", choices=["faiss", "milvus"], help="where vectors are searched (default faiss; "
                   "milvus: examples/rag_build_milvus.yaml)")
    p.add_argument("--uri", help="milvus: a server (http://HOST:19530) or a milvus-lite directory (*.db); "
                                 "default: milvus.db inside the index")
    p.add_argument("--collection", help="milvus: the collection's name (default: mmadapt_<random>)")
    p.set_defaults(func=_releasing(build))

    p = cmds.add_parser("add", help="add files to an index (--replace: re-index changed files)")
    p.add_argument("index")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--replace", action="store_true", help="first remove the passages these files held before")
    p.set_defaults(func=_releasing(add))

    p = cmds.add_parser("update", help="replace the records (documents) a file names by id, embedding only what changed")
    p.add_argument("index")
    p.add_argument("inputs", nargs="+")
    p.set_defaults(func=_releasing(update))

    p = cmds.add_parser("tune", help="adapt the retriever to the corpus: fine-tune the embedder, train a reranker, "
                                     "re-embed the index")
    p.add_argument("index")
    p.add_argument("--out", required=True, help="directory for the tuned embedder/ and reranker/")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--hard-negatives", type=int, default=1, help="mined negatives per pair (0: in-batch only)")
    p.add_argument("--questions", help="JSONL {query, relevant: [ids]} to add to the corpus pairs (e.g. LLM-written)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="documents held out to measure recall")
    p.add_argument("--no-reranker", action="store_true", help="tune the embedder only")
    p.add_argument("--reranker-epochs", type=float, default=3.0)
    p.add_argument("--reranker-negatives", type=positive_int, default=4,
                   help="negatives per pair for the reranker, mined with the tuned embedder")
    p.add_argument("--reranker-loss", choices=("bce", "mnrl"), default="bce",
                   help="bce: each (query, passage) on its own; mnrl: the positive ranked against its negatives")
    p.add_argument("--reranker-sentences", action="store_true",
                   help="also train the reranker on each sentence -> its passage (many more pairs, slower)")
    p.add_argument("--reranker-no-titles", action="store_true",
                   help="the reranker reads passages without their document's title (default: title, then text)")
    p.add_argument("--no-reembed", action="store_true", help="leave the index as it is")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `rag tune` output at --out")
    p.set_defaults(func=_releasing(tune_cli))

    p = cmds.add_parser("delete", help="delete passages by chunk id, source file or document id")
    p.add_argument("index")
    p.add_argument("--id", action="append", help="chunk id (repeatable)")
    p.add_argument("--source", action="append", help="source file as indexed (repeatable)")
    p.add_argument("--doc", action="append", help="document id, e.g. a JSONL record id (repeatable)")
    p.set_defaults(func=_releasing(delete))

    p = cmds.add_parser("query", help="retrieve passages for a text (or image) query")
    p.add_argument("index")
    p.add_argument("text", nargs="?")
    p.add_argument("--image", help="an image as the query (index built with an open_clip embedder)")
    retrieval_flags(p)
    p.set_defaults(func=_releasing(query))

    p = cmds.add_parser("ask", help="answer a question with a model, citing the retrieved passages")
    p.add_argument("index")
    p.add_argument("question")
    p.add_argument("--model", required=True, help="an mmadapt checkpoint directory")
    p.add_argument("--image", help="an image: a retrieval query and, for a vision model, part of the prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt", help="prompt layout: a YAML file or inline YAML, e.g. '{passage: \"{text}\", instruction: \"\"}' "
                   "(default: the layout the model was trained with, from its saved config)")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt sent to the model")
    retrieval_flags(p)
    p.set_defaults(func=_releasing(ask), k=None)  # -k: default the k the model was trained with (its data.retrieval.k), else 5

    p = cmds.add_parser("eval", help="recall@k and MRR of retrieval on judged queries")
    p.add_argument("index")
    p.add_argument("queries", help="JSONL of {query, relevant: [ids]} (or {id, query} with RELEVANT)")
    p.add_argument("relevant", nargs="?", help="JSONL {id, relevant: [ids]} or TSV query_id<TAB>relevant_id")
    p.add_argument("--at", type=positive_int, nargs="+", default=[1, 5, 10], help="the k of recall@k (default 1 5 10)")
    retrieval_flags(p)
    p.set_defaults(func=_releasing(evaluate_cli))

    p = cmds.add_parser("radit", help="write retrieval-augmented SFT conversations (RA-DIT) from QA records")
    p.add_argument("index")
    p.add_argument("qa", help="JSONL of {question, answer, relevant: [ids] (optional)}")
    p.add_argument("--out", required=True, help="conversations JSONL to write (data.train of a run config)")
    p.add_argument("-k", type=int, default=3, help="retrieved passages per prompt")
    p.add_argument("--distractors", type=int, default=1, help="random passages added to each prompt")
    p.add_argument("--mode", choices=["dense", "lexical", "hybrid"], default="dense")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_releasing(radit))

    p = cmds.add_parser("info", help="counts, embedder and kind of an index (--verify re-hashes its files)")
    p.add_argument("index")
    p.add_argument("--verify", action="store_true")
    p.set_defaults(func=_releasing(info))
