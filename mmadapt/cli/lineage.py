"""`mmadapt lineage DIR [--verify]`: print where a model or index came from, and re-hash its files."""

from __future__ import annotations

import argparse

from mmadapt import lineage
from mmadapt.errors import DataError


def run(args: argparse.Namespace) -> int:
    manifest = lineage.read_manifest(args.dir)
    if manifest is None:
        raise DataError(f"{args.dir}: no {lineage.MANIFEST} (not written by mmadapt?)")
    print(lineage.format_chain(manifest))
    if args.verify:
        problems = lineage.verify(args.dir)
        if problems:
            print("\nverify: FAILED")
            for problem in problems:
                print(f"  {problem}")
            return 1
        print("\nverify: OK (every recorded file re-hashed and matches)")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineage", help="print a directory's lineage chain (manifest.json)")
    p.add_argument("dir")
    p.add_argument("--verify", action="store_true", help="re-hash every file the chain records")
    p.set_defaults(func=run)
