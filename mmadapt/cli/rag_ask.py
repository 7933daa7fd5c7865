"""`mmadapt rag ask`: a question answered by a model from retrieved passages, in the prompt layout it was trained
with (or `--prompt`), with its sources."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from mmadapt.cli.rag_options import parse_filters, retriever
from mmadapt.errors import DataError

logger = logging.getLogger("mmadapt.cli.rag")


def ask(args: argparse.Namespace) -> int:
    from mmadapt.model import MultimodalLM
    from mmadapt.rag.augment import RAGPipeline

    if args.image and not Path(args.image).is_file():
        raise DataError(f"--image: file not found: {args.image}")
    prompt = _prompt(args)
    if args.k is None:  # as many passages as the model was trained to read, when its config says
        from mmadapt.rag.augment import training_k

        args.k = training_k(args.model) or 5
    pipeline = RAGPipeline(MultimodalLM.from_pretrained(args.model), retriever(args), prompt=prompt,
                           max_new_tokens=args.max_new_tokens)
    answer = pipeline.ask(args.question, image=args.image, filters=parse_filters(args.filter))
    if args.json:
        print(json.dumps({"answer": answer.text, "cited": answer.cited, "sources": [s.__dict__ for s in answer.sources],
                          **({"messages": answer.messages} if args.show_prompt else {})}, indent=2, default=str))
        return 0
    if args.show_prompt:
        for message in answer.messages:
            print(f"--- {message['role']} ---\n{message['content']}")
        print("--- answer ---")
    print(answer.text)
    print("\nsources:")
    for s in answer.sources:
        mark = "*" if s.n in answer.cited else " "
        print(f" {mark}[{s.n}] {s.label}  ({s.chunk_id}, score {s.score:.3f})")
    return 0


def _prompt(args: argparse.Namespace) -> Any:
    """--prompt (a YAML file or inline YAML of PromptConfig fields), else the layout the model was trained with
    (its saved run config's data.retrieval.prompt), else the default."""
    from mmadapt.config import from_dict
    from mmadapt.rag.augment import PromptConfig, training_prompt

    if args.prompt is None:
        found = training_prompt(args.model)
        if found is not None:
            logger.info("asking with the prompt layout %s was trained with (--prompt to change it)", args.model)
        return found or PromptConfig()
    path = Path(args.prompt)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8") if path.is_file() else args.prompt)
    except yaml.YAMLError as e:
        raise DataError(f"--prompt {args.prompt!r}: cannot read it as YAML: {e}") from e
    if not isinstance(raw, dict):
        raise DataError(f"--prompt {args.prompt!r}: expected a mapping of prompt fields (instruction, passage, question, "
                        "no_passages, max_passage_chars, system) or a YAML file holding one")
    return from_dict(PromptConfig, raw, path="--prompt")
