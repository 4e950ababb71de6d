"""ScaNN vs exact (jitted JAX) search: QPS, recall@10 of ScaNN against exact, build time.

    python benchmarks/search.py --corpus_emb P.npy --query_emb Q.npy --n 100000 > out.json

Vectors: the real corpus embeddings given (e.g. SciFact under all-MiniLM-L6-v2), topped up to
--n with synthetic vectors clustered around randomly chosen real ones (real vector + Gaussian
noise, L2-normalised); queries are the real query embeddings. Without --corpus_emb everything is
synthetic clustered data. The JSON says which. Goal: ScaNN >= 10x exact QPS at recall@10 >= 0.95.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus_emb", "", "Real corpus embeddings (N, D) .npy (optional).")
flags.DEFINE_string("query_emb", "", "Real query embeddings (Q, D) .npy (optional).")
flags.DEFINE_integer("n", 100_000, "Corpus size after synthetic top-up.")
flags.DEFINE_integer("num_queries", 1000, "Queries (real first, synthetic if too few).")
flags.DEFINE_integer("dim", 384, "Dimension for fully synthetic data.")
flags.DEFINE_float("noise", 0.6, "Std of synthetic noise relative to the per-dim std of data.")
flags.DEFINE_integer("k", 10, "Neighbours.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (best is reported).")
flags.DEFINE_list("leaves_to_search", ["", "40", "60"], "ScaNN settings to sweep ('' = default).")
flags.DEFINE_integer("seed", 0, "RNG seed.")
flags.DEFINE_integer("num_leaves", None, "ScaNN num_leaves (default: from the corpus size).")
flags.DEFINE_integer("reorder", None, "ScaNN reorder depth (default: 100).")
flags.DEFINE_bool("torch_baseline", True, "Also time sentence-transformers' exact semantic_search.")
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the baseline.")


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(rng):
    """(corpus (n, D), queries (Q, D), description) — honest about what is real."""
    n, nq = FLAGS.n, FLAGS.num_queries
    if FLAGS.corpus_emb:
        real = _norm(np.load(FLAGS.corpus_emb))
        desc = {"real_corpus_vectors": int(min(len(real), n)), "source": FLAGS.corpus_emb}
    else:
        real = np.zeros((0, FLAGS.dim), np.float32)
        desc = {"real_corpus_vectors": 0, "source": "synthetic: 2,000 Gaussian cluster centres"}
    base = real if len(real) else _norm(rng.standard_normal((2000, FLAGS.dim)))
    sd = base.std(axis=0, keepdims=True)  # (1, D)

    def around(m):
        x = base[rng.integers(0, len(base), m)]
        return _norm(x + FLAGS.noise * sd * rng.standard_normal((m, base.shape[1])))

    corpus = np.concatenate([real[:n], around(max(0, n - len(real)))])
    if FLAGS.query_emb:
        q = _norm(np.load(FLAGS.query_emb))[:nq]
        desc["real_queries"] = int(len(q))
    else:
        q = np.zeros((0, corpus.shape[1]), np.float32)
        desc["real_queries"] = 0
    q = np.concatenate([q, around(nq - len(q))]) if len(q) < nq else q
    desc["synthetic_corpus_vectors"] = int(len(corpus) - desc["real_corpus_vectors"])
    desc["synthetic"] = f"real vector + N(0, ({FLAGS.noise} x per-dim std)^2), L2-normalised"
    return corpus, q, desc


def timed(fn, repeats):
    fn()  # warm-up (jit compile / thread pool)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def torch_exact(p, q, k, ex_t, ex_rows) -> dict:
    """sentence-transformers' exact search (torch matmul + topk) on the same vectors."""
    import torch
    from sentence_transformers import util

    torch.set_num_threads(FLAGS.torch_threads)
    pt, qt = torch.from_numpy(p), torch.from_numpy(q)
    t, hits = timed(lambda: util.semantic_search(qt, pt, top_k=k), FLAGS.repeats)
    agree = np.mean(
        [
            len({h["corpus_id"] for h in hs} & set(r)) / k
            for hs, r in zip(hits, ex_rows, strict=True)
        ]
    )
    return {
        "qps": round(len(q) / t, 1),
        f"recall@{k}_vs_dualenc_exact": round(float(agree), 4),
        "dualenc_exact_speedup": round(t / ex_t, 2),
    }


def main(argv):
    del argv
    import jax

    from dualenc.index.exact import ExactIndex
    from dualenc.index.scann_index import ScannIndex

    rng = np.random.default_rng(FLAGS.seed)
    p, q, desc = make_data(rng)
    k = FLAGS.k
    t = time.perf_counter()
    exact = ExactIndex(p)
    exact_build = time.perf_counter() - t
    ex_t, (_, ex_rows) = timed(lambda: exact.search(q, k), FLAGS.repeats)
    t = time.perf_counter()
    sc = ScannIndex.build(p, k=k, num_leaves=FLAGS.num_leaves, reorder=FLAGS.reorder)
    scann_build = time.perf_counter() - t
    results = []
    for lts in FLAGS.leaves_to_search:
        lts = int(lts) if lts else None
        sc_t, (_, sc_rows) = timed(
            lambda lts=lts: sc.search(q, k, leaves_to_search=lts), FLAGS.repeats
        )
        recall = float(
            np.mean([len(set(a) & set(b)) / k for a, b in zip(sc_rows, ex_rows, strict=True)])
        )
        results.append(
            {
                "leaves_to_search": lts or sc.manifest.params["num_leaves_to_search"],
                "qps": round(len(q) / sc_t, 1),
                f"recall@{k}_vs_exact": round(recall, 4),
                "speedup_vs_exact": round(ex_t / sc_t, 2),
            }
        )
    out = {
        "vectors": {"n": int(len(p)), "dim": int(p.shape[1]), "queries": int(len(q)), **desc},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax_devices": [str(d) for d in jax.devices()],
            "note": "CPU shared with other jobs: timings are noisy",
        },
        "exact": {
            "qps": round(len(q) / ex_t, 1),
            "build_s": round(exact_build, 2),
            "chunk_size": exact.chunk_size,
            "query_batch": exact.query_batch,
        },
        "scann": {"build_s": round(scann_build, 2), "params": sc.manifest.params, "runs": results},
        "goal": "ScaNN >= 10x exact QPS at recall@10 >= 0.95",
        "goal_met": any(
            r["speedup_vs_exact"] >= 10 and r[f"recall@{k}_vs_exact"] >= 0.95 for r in results
        ),
    }
    if FLAGS.torch_baseline:
        out["pytorch_exact"] = torch_exact(p, q, k, ex_t, ex_rows)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    app.run(main)
