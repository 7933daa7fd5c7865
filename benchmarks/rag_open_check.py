"""What refusing an `index.faiss` corrupted at the same size costs on open: faiss's own read of the file versus
that read plus the SHA-256 re-hash against manifest.json (`mmadapt.rag.manifest.check_checksums`).

    python benchmarks/rag_open_check.py [--vectors 100000] [--dim 384] [--repeats 3]

A flat inner-product index of random unit vectors is written once (float32, as `rag build` writes a flat
index); each step is timed in this process, best of `--repeats` (the page cache is warm for both). Printed:
the file size, read time, hash time, SHA-256 throughput, and the ratio checked / unchecked open (1.0 = free).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from timing import best_of  # benchmarks/timing.py




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import faiss
    import numpy as np

    from mmadapt.io import sha256_file
    from mmadapt.rag.manifest import check_checksums

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gen = root / "gen-000001"
        gen.mkdir()
        vectors = np.random.default_rng(0).standard_normal((args.vectors, args.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(args.dim)
        index.add(vectors)
        faiss.write_index(index, str(gen / "index.faiss"))
        manifest = {"files": {"gen-000001/index.faiss": sha256_file(gen / "index.faiss")}}
        size_mb = (gen / "index.faiss").stat().st_size / 1e6

        read = best_of(lambda: faiss.read_index(str(gen / "index.faiss")), args.repeats)
        check = best_of(lambda: check_checksums(root, manifest, gen), args.repeats)
    print(f"index.faiss: {args.vectors} x {args.dim} float32, {size_mb:.1f} MB")
    print(f"faiss.read_index: {read * 1e3:.1f} ms")
    print(f"check_checksums (SHA-256): {check * 1e3:.1f} ms ({size_mb / check:.0f} MB/s)")
    print(f"open with check / without: {(read + check) / read:.2f}")


if __name__ == "__main__":
    main()
