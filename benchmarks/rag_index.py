"""Build time and rate, memory, query latency p50/p99 and recall@10 of the RAG indices (faiss HNSW, IVF-PQ; Milvus)
against exact search.

    python benchmarks/rag_index.py [--n 1000000] [--dim 384] [--queries 1000] [--minilm-n 10000]
                                   [--ef-search 128,256] [--nprobe 64,128] [--hnsw-m 32] [--ef-construction 80]
                                   [--nlist N] [--pq-m 96] [--refine 4] [--faiss-threads 1]
                                   [--kinds flat,hnsw,ivfpq,milvus-hnsw] [--milvus-n 100000]

Two corpora, each indexed by every kind in --kinds (flat = exact faiss search, the reference; hnsw; ivfpq; and
`milvus-KIND`: the same vectors in the Milvus backend, `mmadapt.rag.backends.milvus.MilvusVectors`, on milvus-lite,
the Milvus engine in this process; a Milvus server would be the same client calls over the network). Milvus rows
index the first --milvus-n vectors only when the corpus is larger (their recall is against the exact top 10 of those).
- `mixture`: --n vectors of width --dim from a Gaussian mixture on the unit sphere with the structure
  of real text embeddings (a shared mean direction, clusters of Zipf-distributed sizes, centres and
  spread concentrated in a few directions). Uniform random vectors are a worst case no real corpus has.
  Queries are fresh draws from the same mixture.
- `minilm`: --minilm-n generated sentences embedded with the default embedder (all-MiniLM-L6-v2,
  `mmadapt.rag.embed.load_embedder`), queried by other generated sentences (`embed_queries`).
A structure table compares the two at the same size (cosine of random pairs, of the 1st and the 10th
nearest neighbour, local intrinsic dimension), so the mixture can be judged against real embeddings.

Indices are what users get: `mmadapt.rag.index.new_index / add / search` with `IndexConfig`'s
defaults unless a flag overrides them; IVF-PQ is trained on the store's sample (at most 200k vectors)
and its rows include the store's exact re-scoring of k * refine candidates (from vectors in memory
here; the store reads them from SQLite, which adds to these times). Each (corpus, kind) runs in its
own process, so peak RSS is clean; it includes the corpus array itself (n x dim float32). Latency:
one query per call, as an application asks (the exact index is timed on its first --exact-queries);
recall@10 against the exact top 10. faiss builds and searches with --faiss-threads threads (default 1:
on a machine busy with other jobs, OpenMP's workers wait for a scheduler slice at every parallel
region, which made IVF-PQ training 4x slower and added ~8 ms to every single-query search here;
0 keeps faiss's default, all cores). The last column repeats p50 with faiss's default threads on up
to 100 queries, which is what a caller who never sets them gets.
Index MB is faiss's serialised size (Milvus: the lite directory on disk); RSS +MB what building the index added to
the process; vec/s: vectors indexed per second of build.
The issue's target: p50 < 5 ms at recall@10 >= 0.95 on 1M vectors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10
KINDS = ("flat", "hnsw", "ivfpq", "milvus-hnsw")


def rss_mb(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ corpora
def normalize(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def random_basis(dim: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((dim, dim)))[0]  # [dim, dim] orthogonal


class Mixture:
    """Unit vectors mean + centre[c] + noise, normalised: c ~ Zipf over `clusters`. The centres and the
    noise each vary along a decaying spectrum of directions (a random basis each), so a few directions
    carry most of the variation, as in real embeddings; with isotropic centres the set's local intrinsic
    dimension and its HNSW recall were far from MiniLM's at the same size. Defaults: measured against
    MiniLM embeddings of generated text (cosines within a few hundredths, slightly harder for HNSW)."""

    def __init__(self, dim: int, clusters: int, seed: int = 0, mean_norm: float = 0.45, centre_norm: float = 0.8,
                 centre_decay: float = 0.5, spread: float = 0.8, decay: float = 0.6) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.mean = normalize(rng.standard_normal((1, dim), dtype=np.float32))[0] * mean_norm  # [dim]
        centre_spectrum = (np.arange(dim) + 1.0) ** -centre_decay
        centres = (rng.standard_normal((clusters, dim)) * centre_spectrum) @ random_basis(dim, rng)  # [C, dim]
        self.centres = normalize(centres.astype(np.float32)) * centre_norm  # [C, dim]
        weights = 1.0 / (np.arange(clusters) + 10.0)
        self.weights = weights / weights.sum()
        spectrum = (np.arange(dim) + 1.0) ** -decay
        self.scale = (spectrum / np.sqrt((spectrum**2).sum()) * spread).astype(np.float32)  # [dim], total std = spread
        self.basis = random_basis(dim, rng).astype(np.float32)  # [dim, dim]

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            labels = rng.choice(len(self.centres), m, p=self.weights)
            noise = (rng.standard_normal((m, self.dim), dtype=np.float32) * self.scale) @ self.basis  # [m, dim]
            out[start:start + m] = normalize(self.mean + self.centres[labels] + noise)
        return out


def sentences(words: list[str], n: int, seed: int, topics: int, length: tuple[int, int]) -> list[str]:
    """Generated text with topical structure: domains of words, topics inside them, plus common words."""
    rng = np.random.default_rng(seed)
    structure = np.random.default_rng(0)  # the same domains and topics for passages and queries
    vocab = np.array(words)
    domains = [structure.choice(len(vocab), 300, replace=False) for _ in range(max(1, topics // 10))]
    topic_words = [structure.choice(domains[t % len(domains)], 12, replace=False) for t in range(topics)]
    glue = ["the", "a", "of", "and", "in", "to", "for", "with", "on", "is", "was", "how", "why"]
    out = []
    for _ in range(n):
        t = rng.integers(topics)
        size = int(rng.integers(*length))
        picks = list(vocab[rng.choice(topic_words[t], max(2, size // 2))])  # about half from the topic
        picks += list(vocab[rng.choice(domains[t % len(domains)], size // 4)])  # a quarter from its domain
        picks += list(vocab[rng.integers(len(vocab), size=size // 8)])  # and some from anywhere
        picks += list(rng.choice(glue, size - len(picks))) if size > len(picks) else []
        rng.shuffle(picks)
        out.append(" ".join(picks))
    return out


def minilm_corpus(n: int, queries: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from mmadapt.rag.embed import EmbedderConfig, load_embedder

    if threads:
        torch.set_num_threads(threads)
    embedder = load_embedder(EmbedderConfig())
    vocab = [w for w in embedder.model.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 4]
    words = sorted(vocab)
    topics = max(20, n // 50)
    docs = embedder.embed_documents(sentences(words, n, seed=1, topics=topics, length=(8, 20)))
    asks = embedder.embed_queries(sentences(words, queries, seed=2, topics=topics, length=(5, 12)))
    return docs, asks


def structure(vectors: np.ndarray, sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean cosine of random pairs and of each sampled vector's 1st and 10th nearest neighbour (exact),
    and the mean local intrinsic dimension estimated from those neighbours' distances."""
    from mmadapt.rag import index as vindex

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(sample, len(vectors)), replace=False)
    flat = vindex.new_index("flat", vectors.shape[1], vindex.IndexConfig(kind="flat"))
    vindex.add(flat, vectors, np.arange(len(vectors)))
    scores, _ = vindex.search(flat, vectors[rows], K + 1, vindex.IndexConfig(kind="flat"))  # [s, 11]; 0: itself
    pairs = np.einsum("ij,ij->i", vectors[rows], vectors[rng.choice(len(vectors), len(rows))])
    dist = np.sqrt(np.maximum(2 - 2 * scores[:, 1:], 1e-12))  # unit vectors: L2 from cosine, [s, 10]
    lid = 1 / -np.mean(np.log(dist[:, :-1] / dist[:, -1:]), axis=1)  # Levina-Bickel MLE over 10 neighbours
    return {"random pair": float(pairs.mean()), "1st neighbour": float(scores[:, 1].mean()),
            "10th neighbour": float(scores[:, K].mean()), "local dim": float(np.mean(lid))}


# ------------------------------------------------------------------ one (corpus, kind) per process
def index_config(args: argparse.Namespace, kind: str, **override) -> "object":
    from mmadapt.rag.index import IndexConfig

    given = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "nlist": args.nlist, "pq_m": args.pq_m,
             "refine": args.refine}
    return IndexConfig(kind=kind, **{k: v for k, v in {**given, **override}.items() if v is not None})


def timed_queries(index, queries: np.ndarray, cfg, vectors: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One search per query, as `rag.store.Index.search` does it (IVF-PQ: fetch k * refine, re-score exactly)."""
    from mmadapt.rag import index as vindex

    fetch = K * cfg.refine if kind == "ivfpq" and cfg.refine else K
    found = np.empty((len(queries), K), dtype=np.int64)
    seconds = np.empty(len(queries))
    for i, query in enumerate(queries):
        start = time.perf_counter()
        _, ids = vindex.search(index, query[None], fetch, cfg)  # [1, fetch]
        if fetch > K:
            candidates = ids[0][ids[0] >= 0]
            _, ids = vindex.exact_topk(query[None], vectors[candidates], candidates, K, cfg.metric)
        seconds[i] = time.perf_counter() - start
        found[i] = ids[0]
    return found, seconds


def warm(backend, queries: np.ndarray, settle_s: float = 30.0) -> None:
    """Search for `settle_s` seconds first: milvus-lite keeps compacting segments for a while after a large insert
    (searches ran 3-5x slower for ~20 s after its index reported itself finished)."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        for query in queries:
            backend.search(query[None], K, None, None, 1.0)


def milvus_child(args: argparse.Namespace, root: Path, corpus: str, kind: str) -> list[dict]:
    """The Milvus backend as the store drives it: one write (begin, add, flush, commit), then searches."""
    from mmadapt.rag.backends.milvus import MilvusVectors

    vectors = np.load(root / f"{corpus}-vectors.npy")[: args.milvus_n]
    queries = np.load(root / f"{corpus}-queries.npy")
    truth = np.load(root / f"{corpus}-truth.npy")
    if len(vectors) < len(np.load(root / f"{corpus}-vectors.npy", mmap_mode="r")):
        from mmadapt.rag import index as vindex  # the exact top 10 among the vectors Milvus holds

        flat = vindex.new_index("flat", vectors.shape[1], index_config(args, "flat"))
        vindex.add(flat, vectors, np.arange(len(vectors)))
        truth = vindex.search(flat, queries, K, index_config(args, "flat"))[1]
    inner = kind.removeprefix("milvus-")
    before = rss_mb()
    cfg = index_config(args, inner, backend="milvus")
    folder = root / f"{corpus}-{kind}"
    folder.mkdir()
    start = time.perf_counter()
    backend = MilvusVectors.create(folder, cfg, vectors.shape[1])
    backend.begin(2)
    backend.add(vectors, np.arange(len(vectors)))
    backend.save(folder)
    backend.committed()
    deadline = time.monotonic() + 1800  # Milvus builds its index in the background: part of the build's time
    while time.monotonic() < deadline:
        state = backend.client.describe_index(backend.collection, "vector")
        if not state.get("pending_index_rows") and state.get("state") in ("Finished", None):
            break
        time.sleep(0.2)
    build = time.perf_counter() - start
    added = rss_mb() - before
    settings = {"flat": [{}], "hnsw": [{"ef_search": e} for e in args.ef_search],
                "ivfpq": [{"nprobe": p} for p in args.nprobe], "auto": [{}]}[inner]
    rows = []
    for setting in settings:
        backend.config = index_config(args, inner, backend="milvus", **setting)
        warm(backend, queries[:20], settle_s=30.0 if not rows else 2.0)
        found = np.empty((len(queries), K), dtype=np.int64)
        seconds = np.empty(len(queries))
        for i, query in enumerate(queries):
            t = time.perf_counter()
            found[i] = backend.search(query[None], K, None, None, 1.0)[1][0]
            seconds[i] = time.perf_counter() - t
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
        rows.append({"kind": kind, "setting": ", ".join(f"{k} {v}" for k, v in setting.items()) or "exact",
                     "build_s": build, "vectors": len(vectors), "recall": float(recall),
                     "p50_ms": 1000 * float(np.percentile(seconds, 50)), "p99_ms": 1000 * float(np.percentile(seconds, 99)),
                     "threads": 0, "p50_default_threads_ms": float("nan")})
    backend.close()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    for row in rows:
        row.update(index_mb=size / 2**20, rss_added_mb=added, peak_rss_mb=rss_mb("VmHWM"))
    return rows


def child(args: argparse.Namespace, root: Path, corpus: str, kind: str) -> list[dict]:
    import faiss

    from mmadapt.rag import index as vindex
    from mmadapt.rag.backends.faiss_vectors import training_sample as _training_sample  # the store's IVF-PQ sample

    default_threads = faiss.omp_get_max_threads()
    if args.faiss_threads:
        faiss.omp_set_num_threads(args.faiss_threads)
    vectors = np.load(root / f"{corpus}-vectors.npy")
    queries = np.load(root / f"{corpus}-queries.npy")
    before = rss_mb()
    cfg = index_config(args, kind)
    start = time.perf_counter()
    train = _training_sample(vectors) if kind == "ivfpq" else None
    index = vindex.new_index(kind, vectors.shape[1], cfg, train=train)
    vindex.add(index, vectors, np.arange(len(vectors)))
    build = time.perf_counter() - start
    added = rss_mb() - before
    if kind == "flat":  # the ground truth, one batched exact search
        _, truth = vindex.search(index, queries, K, cfg)
        np.save(root / f"{corpus}-truth.npy", truth)
    truth = np.load(root / f"{corpus}-truth.npy")
    settings = {"flat": [{}], "hnsw": [{"ef_search": e} for e in args.ef_search],
                "ivfpq": [{"nprobe": p} for p in args.nprobe]}[kind]
    timed = queries[: args.exact_queries] if kind == "flat" else queries  # exact search is slow one query at a time
    threads = faiss.omp_get_max_threads()  # --faiss-threads, or the default
    rows = []
    for setting in settings:
        cfg = index_config(args, kind, **setting)
        faiss.omp_set_num_threads(threads)
        timed_queries(index, timed[:20], cfg, vectors, kind)  # warm caches and threads
        found, seconds = timed_queries(index, timed, cfg, vectors, kind)
        faiss.omp_set_num_threads(default_threads)  # as a caller who never sets them gets
        _, default_seconds = timed_queries(index, timed[:100], cfg, vectors, kind)
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
        rows.append({"kind": kind, "setting": ", ".join(f"{k} {v}" for k, v in setting.items()) or "exact",
                     "build_s": build, "vectors": len(vectors), "recall": float(recall), "p50_ms": 1000 * float(np.percentile(seconds, 50)),
                     "p99_ms": 1000 * float(np.percentile(seconds, 99)), "threads": default_threads,
                     "p50_default_threads_ms": 1000 * float(np.percentile(default_seconds, 50))})
    peak = rss_mb("VmHWM")  # before serialising, which holds a copy
    path = root / f"{corpus}-{kind}.faiss"
    vindex.write(index, str(path))
    size = path.stat().st_size
    path.unlink()
    shape = {}
    if kind == "ivfpq":
        nlist, pq_m, _ = vindex.ivfpq_shape(len(train), vectors.shape[1], cfg)
        shape = {"nlist": nlist, "pq_m": pq_m}
    for row in rows:
        row.update(index_mb=size / 2**20, rss_added_mb=added, peak_rss_mb=peak, **shape)
    return rows


# ------------------------------------------------------------------ driver
def run_corpus(args: argparse.Namespace, root: Path, corpus: str) -> list[dict]:
    rows = []
    for kind in ["flat"] + [k for k in args.kinds if k != "flat"]:  # flat first: it writes the ground truth
        cmd = [sys.executable, __file__, "--child", f"{corpus}:{kind}", "--root", str(root)]
        for key in ("hnsw_m", "ef_construction", "nlist", "pq_m", "refine", "faiss_threads", "exact_queries", "milvus_n"):
            if getattr(args, key) is not None:
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        cmd += ["--ef-search", ",".join(map(str, args.ef_search)), "--nprobe", ",".join(map(str, args.nprobe))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{corpus} {kind} failed:\n{proc.stderr[-3000:]}")
        rows += json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        print(f"  {corpus} {kind}: done", file=sys.stderr, flush=True)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    exact = next(r for r in rows if r["kind"] == "flat")
    print(f"\n{title}")
    print(f"{'index':<13}{'setting':<14}{'build s':>9}{'vec/s':>9}{'index MB':>10}{'RSS +MB':>9}{'peak RSS MB':>12}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'recall@10':>11}{'p50 / exact':>13}{'MB / exact':>12}"
          f"{'p50 ms ' + str(exact['threads']) + ' thr':>14}")
    for r in rows:
        print(f"{r['kind']:<13}{r['setting']:<14}{r['build_s']:>9.1f}{r['vectors'] / r['build_s']:>9.0f}{r['index_mb']:>10.0f}{r['rss_added_mb']:>9.0f}"
              f"{r['peak_rss_mb']:>12.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['recall']:>11.3f}"
              f"{r['p50_ms'] / exact['p50_ms']:>13.3f}{r['index_mb'] / exact['index_mb']:>12.3f}"
              f"{r['p50_default_threads_ms']:>14.2f}")


def main() -> None:
    from mmadapt.rag.index import IndexConfig, resolve_kind

    defaults = IndexConfig()
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="mixture vectors")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=None, help="mixture components (default: n / 250)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--minilm-n", type=int, default=10_000, help="MiniLM-embedded generated sentences (0: skip)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the MiniLM embedding (1: stable on a busy machine; 0: torch's default)")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS),
                        help="comma list of index kinds (flat, the reference, always runs)")
    parser.add_argument("--ef-search", type=ints, default=[defaults.ef_search, 2 * defaults.ef_search],
                        help=f"HNSW efSearch values (comma list; IndexConfig default {defaults.ef_search})")
    parser.add_argument("--nprobe", type=ints, default=[defaults.nprobe, 2 * defaults.nprobe],
                        help=f"IVF nprobe values (comma list; IndexConfig default {defaults.nprobe})")
    parser.add_argument("--hnsw-m", type=int, help=f"default {defaults.hnsw_m}")
    parser.add_argument("--ef-construction", type=int, help=f"default {defaults.ef_construction}")
    parser.add_argument("--nlist", type=int, help="IVF cells (default: IndexConfig's rule)")
    parser.add_argument("--pq-m", type=int, help="PQ sub-quantizers (default: dim / 4)")
    parser.add_argument("--refine", type=int, help=f"IVF-PQ re-scoring factor (default {defaults.refine})")
    parser.add_argument("--faiss-threads", type=int, default=1,
                        help="faiss threads for building and timed searches (0: faiss's default; see the docstring)")
    parser.add_argument("--exact-queries", type=int, default=100, help="queries timed one by one on the exact index")
    parser.add_argument("--milvus-n", type=int, default=100_000,
                        help="Milvus rows index at most this many of the corpus's vectors (milvus-lite is one process)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, kind = args.child.split(":")
        run = milvus_child if kind.startswith("milvus-") else child
        print("RESULT " + json.dumps(run(args, Path(args.root), corpus, kind)))
        return

    root = Path(tempfile.mkdtemp(prefix="mmadapt-rag-bench-"))
    try:
        tables, shapes = [], {}
        if args.minilm_n:
            start = time.perf_counter()
            docs, asks = minilm_corpus(args.minilm_n, args.queries, args.threads)
            embed_s = time.perf_counter() - start
            np.save(root / "minilm-vectors.npy", docs)
            np.save(root / "minilm-queries.npy", asks)
            mixture = Mixture(docs.shape[1], args.clusters or max(1, args.n // 250))
            shapes = {"MiniLM sentences": structure(docs),
                      "mixture (same n)": structure(mixture.sample(len(docs), seed=3))}
            tables.append((f"minilm: {len(docs)} generated sentences, all-MiniLM-L6-v2 (embedded in {embed_s:.0f} s), "
                           f"{len(asks)} queries, auto kind {resolve_kind(defaults, len(docs))}",
                           run_corpus(args, root, "minilm")))
        mixture = Mixture(args.dim, args.clusters or max(1, args.n // 250))
        np.save(root / "mixture-vectors.npy", mixture.sample(args.n, seed=1))
        np.save(root / "mixture-queries.npy", mixture.sample(args.queries, seed=2))
        tables.append((f"mixture: {args.n} x {args.dim} ({len(mixture.centres)} clusters), {args.queries} queries, "
                       f"auto kind {resolve_kind(defaults, args.n)}", run_corpus(args, root, "mixture")))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cfg = dataclasses.asdict(index_config(args, "auto"))
    knobs = ("hnsw_m", "ef_construction", "nlist", "pq_m", "pq_bits", "refine")
    print("\nIndexConfig: " + ", ".join(f"{k}={cfg[k]}" for k in knobs))
    if shapes:
        print(f"\nstructure ({args.minilm_n} vectors: mean cosines; local intrinsic dimension)")
        print(f"{'corpus':<20}" + "".join(f"{k:>16}" for k in next(iter(shapes.values()))))
        for name, stats in shapes.items():
            print(f"{name:<20}" + "".join(f"{v:>16.3f}" for v in stats.values()))
    for title, rows in tables:
        print_table(title, rows)
        ivf = next((r for r in rows if "nlist" in r), None)
        if ivf:
            print(f"ivfpq shape: nlist {ivf['nlist']}, pq_m {ivf['pq_m']} x {cfg['pq_bits']} bits")
    print(f"\ntarget: p50 < 5 ms at recall@10 >= 0.95; ratios against exact search (flat) in the same run")


if __name__ == "__main__":
    main()
