"""faiss's noise kept out of users' terminals: IVF-PQ trained on a small sample without faiss's per-sub-quantizer
"please provide at least N training points" lines (nlist sized from the sample, and said so in the log), and
faiss's loader lines about missing AVX-512 / AVX2 modules hidden."""

import logging
import subprocess
import sys
import textwrap

import numpy as np

from mmadapt.rag.index import MIN_POINTS, IndexConfig, add, ivfpq_shape, new_index, search


def test_ivfpq_on_a_small_sample_trains_quietly_and_says_how_it_was_sized(capfd, caplog):
    vectors = np.random.RandomState(0).randn(1000, 64).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with caplog.at_level(logging.INFO, logger="mmadapt.rag.index"):
        index = new_index("ivfpq", 64, IndexConfig(kind="ivfpq", nlist=100), train=vectors)
    err = capfd.readouterr().err
    assert "training points" not in err, err[:500]  # faiss's k-means prints these to stderr (fd 2), one per codebook
    nlist, m, bits = ivfpq_shape(1000, 64, IndexConfig(nlist=100))
    assert nlist == 1000 // MIN_POINTS == 25 and m == 16 and bits == 8
    logged = caplog.text
    assert "25 cells instead of the configured 100" in logged and "256 codes per sub-quantizer" in logged
    # the quiet index still finds what it holds
    add(index, vectors, np.arange(1000, dtype=np.int64))
    _, ids = search(index, vectors[:20], 5, IndexConfig(kind="ivfpq", nlist=100))
    assert (ids[:, 0] == np.arange(20)).mean() >= 0.8


def test_faiss_loader_lines_are_hidden_without_touching_other_loggers():
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        from mmadapt.rag.index import IndexConfig, new_index
        new_index("flat", 8, IndexConfig())
        assert logging.getLogger().level == logging.DEBUG  # the root logger is the user's
        logging.getLogger("faiss.other").info("still shown")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "AVX" not in run.stderr and "faiss.loader" not in run.stderr, run.stderr
    assert "still shown" in run.stderr
