"""Hybrid retrieval: fuse two runs (e.g. BM25 and dense) after per-query score normalisation.

fused(d) = norm_a(d) + weight * norm_b(d) over the union of both runs' candidates; a doc missing
from one run gets that run's minimum normalised score for the query (0 for min-max). For RRF,
fused(d) = 1 / (k_rrf + rank_a(d)) + weight / (k_rrf + rank_b(d)), a missing doc adding 0.
This is DPR's hybrid (BM25 + lambda * dense) with the normalisation made explicit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dualenc.index.base import Run

METHODS = ("minmax", "zscore", "rrf")
DEFAULT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0, 3.0, 5.0)


def _normalise(scores: dict[str, float], method: str) -> tuple[dict[str, float], float]:
    """Normalised scores of one query's ranking and the value given to a missing doc."""
    if not scores:
        return {}, 0.0
    ids = list(scores)
    s = np.array([scores[d] for d in ids], np.float64)
    if method == "minmax":
        lo, span = s.min(), s.max() - s.min()
        n = (s - lo) / span if span > 0 else np.ones_like(s)
    elif method == "zscore":
        sd = s.std()
        n = (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    elif method == "rrf":
        order = sorted(range(len(ids)), key=lambda i: -s[i])  # stable: ties keep run order
        n = np.empty_like(s)
        n[order] = np.arange(1, len(ids) + 1)
        return dict(zip(ids, n.tolist(), strict=True)), np.inf
    else:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {METHODS}")
    return dict(zip(ids, n.tolist(), strict=True)), float(n.min())


def fuse(
    run_a: Run,
    run_b: Run,
    method: str = "minmax",
    weight: float = 1.0,
    k_rrf: int = 60,
    depth: int | None = None,
) -> Run:
    """Fuses two runs per query; returns docs sorted by fused score (best first)."""
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {METHODS}")
    out: Run = {}
    for qid in list(run_a) + [q for q in run_b if q not in run_a]:
        na, miss_a = _normalise(run_a.get(qid, {}), method)
        nb, miss_b = _normalise(run_b.get(qid, {}), method)
        fused = {}
        for d in list(na) + [d for d in nb if d not in na]:
            if method == "rrf":
                fa = 1.0 / (k_rrf + na[d]) if d in na else 0.0
                fb = 1.0 / (k_rrf + nb[d]) if d in nb else 0.0
            else:
                fa, fb = na.get(d, miss_a), nb.get(d, miss_b)
            fused[d] = fa + weight * fb
        ranked = sorted(fused.items(), key=lambda x: -x[1])
        out[qid] = dict(ranked[:depth] if depth else ranked)
    return out


def tune_weight(
    run_a: Run,
    run_b: Run,
    qrels: dict[str, dict[str, int]],
    metric: str = "nDCG@10",
    grid: Sequence[float] = DEFAULT_GRID,
    method: str = "minmax",
    k_rrf: int = 60,
) -> tuple[float, dict[float, float]]:
    """Grid-searches the weight of run_b maximising `metric` on these (training!) qrels.

    Returns (best weight, {weight: metric}); ties go to the earlier grid value.
    """
    from dualenc.metrics import evaluate_run

    if not grid:
        raise ValueError("empty weight grid")
    scores = {}
    for w in grid:
        agg, _ = evaluate_run(fuse(run_a, run_b, method, w, k_rrf), qrels, measures=(metric,))
        scores[float(w)] = agg[metric]
    best = max(scores, key=lambda w: (scores[w], -list(scores).index(w)))
    return best, scores


def fuse_head(
    first: Run, second: Run, top: int, method: str = "minmax", weight: float = 1.0
) -> Run:
    """first + weight * second over each query's top `top` docs of `first` (e.g. a first stage
    and its cross-encoder scores); the rest of `first` stays below them, in its own order."""
    out: Run = {}
    for qid, scores in first.items():
        ranked = sorted(scores, key=lambda d: -scores[d])
        head = ranked[:top]
        fused = fuse(
            {qid: {d: scores[d] for d in head}},
            {qid: {d: second[qid][d] for d in head if d in second.get(qid, {})}},
            method,
            weight,
        )[qid]
        floor = min(fused.values(), default=0.0)
        out[qid] = {**fused, **{d: floor - r for r, d in enumerate(ranked[top:], start=1)}}
    return out
