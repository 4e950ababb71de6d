"""Retrieval evaluation during training: encode queries + corpus with the current params, exact
search, IR metrics (nDCG@10, RR@10, R@k) through `metrics.evaluate_run`.

Used for the periodic dev evaluation and for the before/after comparison printed by the demo.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from absl import logging


def measures_for(k_values) -> list[str]:
    """nDCG@10, RR@10 and R@k for each k (deduplicated, in order)."""
    out = ["nDCG@10", "RR@10"] + [f"R@{int(k)}" for k in k_values]
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=8)
def load_split(root: str, split: str, max_queries: int = 0):
    """BEIR split (cached: the periodic eval reads it once); optionally the first N queries."""
    from dualenc.data.beir import load_beir

    ds = load_beir(root, split)
    if max_queries and len(ds.queries) > max_queries:
        keep = sorted(ds.queries)[:max_queries]
        queries = {q: ds.queries[q] for q in keep}
        qrels = {q: ds.qrels[q] for q in keep if q in ds.qrels}
        ds = type(ds)(corpus=ds.corpus, queries=queries, qrels=qrels)
    return ds


def evaluate_retrieval(
    q_encoder,
    p_encoder,
    ds,
    *,
    k_values=(10, 100),
    batch_size: int = 64,
    max_length: int | None = None,
    similarity: str = "dot",
    progress: bool = False,
) -> dict[str, float]:
    """{measure: value} for `ds` (BeirDataset) with the given query / passage encoders.

    Only judged queries are encoded. Embeddings from a normalising encoder make 'dot' cosine.
    """
    from dualenc.encode import beir_doc_text, encode_texts
    from dualenc.index.base import rows_to_run
    from dualenc.index.exact import ExactIndex
    from dualenc.metrics import evaluate_run

    t0 = time.time()
    qids = [q for q in sorted(ds.queries) if q in ds.qrels]
    doc_ids = list(ds.corpus)
    q_texts = [ds.queries[q] for q in qids]
    p_texts = [beir_doc_text(ds.corpus[d]) for d in doc_ids]
    kw = {"batch_size": batch_size, "max_length": max_length, "progress": progress}
    q_emb = encode_texts(q_encoder, q_texts, **kw)
    p_emb = encode_texts(p_encoder, p_texts, **kw)
    k = min(max(max(int(k) for k in k_values), 10), len(doc_ids))
    index = ExactIndex(np.asarray(p_emb, np.float32), similarity=similarity)
    scores, rows = index.search(np.asarray(q_emb, np.float32), k)
    run = rows_to_run(qids, scores, rows, doc_ids)
    agg, _ = evaluate_run(run, ds.qrels, measures_for(k_values))
    logging.info(
        "retrieval eval: %d queries x %d docs in %.1fs: %s",
        len(qids),
        len(doc_ids),
        time.time() - t0,
        agg,
    )
    return agg


def format_before_after(before: dict, after: dict, split: str) -> str:
    """A small table: measure, before, after, delta."""
    lines = [f"{split:<10} {'before':>8} {'after':>8} {'delta':>8}"]
    for m in before:
        b, a = before[m], after.get(m, float("nan"))
        lines.append(f"{m:<10} {b:8.4f} {a:8.4f} {a - b:+8.4f}")
    return "\n".join(lines)
