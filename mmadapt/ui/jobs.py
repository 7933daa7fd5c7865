"""Background `mmadapt` subprocesses (train / merge / edit / eval / lineage) started from the web app.

The tabs run the same CLI a user would, in a subprocess, so a stop is a signal and a resume is `--resume`."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    argv: list[str]
    cwd: Path
    proc: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def state(self) -> str:
        code = self.proc.poll()
        return "running" if code is None else ("finished" if code == 0 else f"failed (exit {code})")


class Jobs:
    """One job per kind (a second start of a kind replaces a finished one, refuses a running one)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, args: list[str], cwd: Path) -> Job:
        with self._lock:
            old = self._jobs.get(kind)
            if old is not None and old.proc.poll() is None:
                raise RuntimeError(f"a {kind} job is still running; stop it first")
            argv = [sys.executable, "-m", "mmadapt.cli", *args]
            proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            job = Job(argv, cwd, proc)
            threading.Thread(target=self._pump, args=(job,), daemon=True).start()
            self._jobs[kind] = job
            return job

    @staticmethod
    def _pump(job: Job) -> None:
        assert job.proc.stdout is not None
        for line in job.proc.stdout:
            job.output.append(line.rstrip("\n"))
            del job.output[:-400]  # keep the tail: a long run prints much

    def stop(self, kind: str) -> bool:
        job = self._jobs.get(kind)
        if job is None or job.proc.poll() is not None:
            return False
        job.proc.terminate()
        try:
            job.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            job.proc.kill()
        return True

    def status(self, kind: str) -> dict[str, Any]:
        job = self._jobs.get(kind)
        if job is None:
            return {"state": "idle", "output": ""}
        return {"state": job.state(), "output": "\n".join(job.output[-60:]), "argv": job.argv[3:]}

    def close(self) -> None:
        for kind in list(self._jobs):
            self.stop(kind)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The run's `log.jsonl` records (skips a half-written last line)."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
