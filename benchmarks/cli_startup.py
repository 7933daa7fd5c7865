"""How fast the CLI starts: `mmadapt --help` (and a subcommand's --help) against `python -c pass`, in one run.

Runs are interleaved round by round so a busy machine slows both sides alike; prints the median wall time of each
command and its ratio to the bare interpreter. Target: `mmadapt --help` under 1 s.

    python benchmarks/cli_startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mmadapt --help": [sys.executable, "-m", "mmadapt.cli", "--help"],
    "mmadapt train --help": [sys.executable, "-m", "mmadapt.cli", "train", "--help"],
    "mmadapt generate --help": [sys.executable, "-m", "mmadapt.cli", "generate", "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    bare = statistics.median(times["python -c pass"])
    print(f"{'command':<26}{'median s':>10}{'x bare':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<26}{median:>10.3f}{median / bare:>9.2f}")
    help_median = statistics.median(times["mmadapt --help"])
    print(f"help_seconds={help_median:.3f} ratio={help_median / bare:.2f}")


if __name__ == "__main__":
    main()
