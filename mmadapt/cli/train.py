"""`mmadapt train CONFIG.yaml`: parse, call `mmadapt.train.run.train`, close the process group, print the metrics."""

from __future__ import annotations

import argparse


def run_cli(args: argparse.Namespace) -> int:
    from mmadapt.run_config import load_run
    from mmadapt.train.run import train

    config = load_run(args.config, args.set)
    try:
        metrics = train(config, resume=args.resume, overwrite=args.overwrite)
        end_process_group(wait=True)
    finally:
        end_process_group(wait=False)  # after an error: close without waiting for ranks that may be gone
    print_table(metrics, title=f"mmadapt train: {config.output_dir}")
    return 0


def end_process_group(wait: bool) -> None:
    """Under `accelerate launch`: (wait for every rank: rank 0 may still be saving, then) close the group.
    A rank that exits with its gloo/NCCL threads still running can abort ("terminate called without an
    active exception", seen at exit in the 2-process test)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def print_table(metrics: dict[str, float], title: str = "") -> None:
    width = max((len(k) for k in metrics), default=10)
    if title:
        print(f"\n{title}")
    print("-" * (width + 16))
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:>12.4f}" if isinstance(value, float) else f"{key:<{width}}  {value:>12}")
    print("-" * (width + 16))


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a YAML run config")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output_dir if it holds an earlier training output (never files mmadapt did not write)")
    p.set_defaults(func=run_cli)
