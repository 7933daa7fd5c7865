"""Crash safety for real: a writer process is SIGKILLed mid-write (at chosen points, and at a random moment by
another process); the index reopens in its last committed state, and the next write succeeds and clears leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmadapt.rag.chunk import Chunk, sha256_text
from mmadapt.rag.store import RagIndex

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# The writer: opens INDEX (no embedder needed: vectors are given) and adds passages START.. in batches of BATCH,
# printing the count after each committed write. STAGE names the point at which it kills itself with SIGKILL
# (no handler, no cleanup runs); "none" writes until killed from outside.
WRITER = r"""
import os, signal, sys
import numpy as np
from mmadapt.rag import store
from mmadapt.rag.chunk import Chunk, sha256_text

path, stage, start, batch, batches = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if stage == "vectors-save":  # faiss: half the next generation's index.faiss on disk; Milvus: its rows flushed
    from mmadapt.rag.backends.faiss_vectors import FaissVectors
    from mmadapt.rag.backends.milvus import MilvusVectors
    for cls in (FaissVectors, MilvusVectors):
        def save(self, gen_dir, real_save=cls.save):
            real_save(self, gen_dir)
            for name in self.files:
                with open(gen_dir / name, "r+b") as f:
                    f.truncate(os.path.getsize(gen_dir / name) // 2)
            die()
        cls.save = save
elif stage == "before-commit":  # the next generation is complete and renamed into place; the manifest is not
    store.index_manifest.write = die
elif stage == "manifest-rename":  # the new manifest is in its temp file, not yet renamed over manifest.json
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith("manifest.json"):
            die()
        real_replace(src, dst)
    os.replace = replace
elif stage == "cleanup":  # committed; killed while removing the previous generation
    import shutil  # the write path (rag/writes.py) removes old generations with it
    shutil.rmtree = die

index = store.RagIndex.open(path)
rng = np.random.default_rng(start)
for b in range(batches):
    ids = range(start + b * batch, start + (b + 1) * batch)
    chunks = [Chunk(f"c{i}#0", f"passage {i}", "s.txt", f"c{i}", None, 0, 0, "text", {}, sha256_text(f"passage {i}"),
                    sha256_text(f"doc {i}")) for i in ids]
    vectors = rng.standard_normal((len(chunks), index.dim)).astype(np.float32)
    index.add_chunks(chunks, vectors)
    print(len(index), flush=True)
"""


def add(index: RagIndex, ids: range) -> None:
    chunks = [Chunk(f"c{i}#0", f"passage {i}", "s.txt", f"c{i}", None, 0, 0, "text", {}, sha256_text(f"passage {i}"),
                    sha256_text(f"doc {i}")) for i in ids]
    index.add_chunks(chunks, np.random.default_rng(ids.start).standard_normal((len(chunks), index.dim)).astype(np.float32))


def writer(path: Path, stage: str, start: int, batch: int, batches: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), stage, str(start), str(batch), str(batches)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leftovers(path: Path) -> list[str]:
    """Entries that are not the committed generation, the manifest or the lock file."""
    current = f"gen-{json.loads((path / 'manifest.json').read_text())['store']['generation']:06d}"
    return sorted(p.name for p in path.iterdir() if p.name not in (current, "manifest.json", ".lock", "milvus.db"))


def assert_consistent(path: Path, expected: int, written: bool = False) -> RagIndex:
    """The index opens, and its manifest, SQLite rows and vectors all agree on `expected` passages; once `written`
    since a crash, Milvus holds no row of the killed write either."""
    from mmadapt.lineage import verify

    index = RagIndex.open(path)
    assert len(index) == expected and len(index.chunk_ids()) == expected and index.vectors.ntotal == expected
    assert index.stats()["vectors"] == expected
    assert verify(path) == []  # every file the manifest names hashes as recorded
    if written and index.store["backend"] == "milvus":
        every = index.vectors.client.query(index.vectors.collection, filter="", output_fields=["count(*)"])
        assert every[0]["count(*)"] == expected
    return index


def create(path: Path, minilm, backend: str) -> RagIndex:
    from mmadapt.config import from_dict
    from mmadapt.rag.store import RagConfig

    return RagIndex.create(path, from_dict(RagConfig, {"index": {"backend": backend}}), embedder=minilm)


@pytest.fixture
def index20(tmp_path, minilm, backend) -> RagIndex:
    index = create(tmp_path / "idx", minilm, backend)
    add(index, range(20))
    index.close(release=True)  # milvus-lite: one process at a time, and the writer is another one
    return index


@pytest.mark.parametrize("stage,survives", [("vectors-save", False), ("before-commit", False),
                                            ("manifest-rename", False), ("cleanup", True)])
def test_a_writer_killed_at_each_stage_leaves_the_last_committed_state(index20, stage, survives):
    path = index20.path
    proc = writer(path, stage, start=100, batch=10, batches=1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert out == ""  # killed before reporting the write as done
    assert leftovers(path)  # the killed write left something behind
    index = assert_consistent(path, 30 if survives else 20)
    assert ("c100#0" in index.chunk_ids()) == survives
    add(index, range(200, 205))  # the next write succeeds, keeps everything committed and clears the leftovers
    assert_consistent(path, 35 if survives else 25, written=True)
    assert leftovers(path) == []


def test_a_writer_killed_from_outside_mid_write_leaves_a_committed_state(tmp_path, minilm, backend):
    index = create(tmp_path / "idx", minilm, backend)
    add(index, range(3000))  # a few MB per generation: each write takes long enough to be caught inside
    index.close(release=True)
    path, batch = index.path, 25
    for attempt in range(3):  # a loaded machine may miss the window; each attempt continues from the committed state
        start = 10_000 * (attempt + 1)
        proc = writer(path, "none", start=start, batch=batch, batches=400)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        caught = False
        while time.monotonic() < deadline and proc.poll() is None:
            if len(lines) >= 2 and any(p.name.startswith(".gen-") for p in path.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)  # a temp generation exists: the writer is inside a write
                caught = True
                break
            time.sleep(0.0005)
        proc.wait(timeout=30)
        reader.join(timeout=30)
        assert caught, f"the writer ended on its own: {proc.stderr.read()}"
        if leftovers(path):
            break
    assert leftovers(path), "never killed inside a write in 3 attempts"
    reported = int(lines[-1])  # the last count the writer saw committed; it may have committed one more batch
    index = RagIndex.open(path)
    assert len(index) in (reported, reported + batch)
    assert_consistent(path, len(index))
    before = len(index)
    add(index, range(90_000, 90_010))
    assert_consistent(path, before + 10, written=True)
    assert leftovers(path) == []
