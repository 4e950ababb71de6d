"""The one retrieval-evaluation engine: train-time eval and `dualenc.evaluate` both go through it.

load a BEIR split (`load_split`) -> encode the corpus with the passage tower (`encode_corpus`,
optionally cached) -> index -> encode queries with the query tower and search (`dense_run`) ->
IR metrics (nDCG@10, RR@10, R@k) through `metrics.evaluate_run`.

Multi-host: every process calls these functions with the same inputs; corpus encoding and exact
search shard over all devices of all hosts and every process gets identical results.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from dualenc import multihost
from dualenc.data.beir import BeirDataset, filter_qrels, load_beir, load_qrels
from dualenc.index.base import Run, rows_to_run
from dualenc.index.exact import ExactIndex
from dualenc.inference import corpus_cache
from dualenc.inference.encode import beir_doc_text, encode_texts, warn_empty
from dualenc.io import InputError
from dualenc.metrics import evaluate_run


def measures_for(k_values) -> list[str]:
    """nDCG@10, RR@10 and R@k for each k (deduplicated, in order)."""
    out = ["nDCG@10", "RR@10"] + [f"R@{int(k)}" for k in k_values]
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=8)
def load_split(
    root: str | os.PathLike, split: str, max_queries: int = 0, qrels_file: str = ""
) -> BeirDataset:
    """A BEIR split (cached: the periodic eval reads it once); the first N judged queries if
    `max_queries`; `qrels_file` replaces the split's qrels. Empty documents are kept.

    Callers must not mutate the (shared, cached) result.
    """
    ds = load_beir(root, split, allow_empty_docs=True)
    qrels = ds.qrels
    if qrels_file:
        qrels = filter_qrels(load_qrels(qrels_file), ds.queries, ds.corpus, source=qrels_file)
    if not qrels:
        raise InputError(f"no judged queries for split {split!r}", path=root)
    queries = ds.queries
    if max_queries and len(qrels) > max_queries:
        keep = sorted(qrels)[:max_queries]
        qrels = {q: qrels[q] for q in keep}
        queries = {q: ds.queries[q] for q in keep}
    return BeirDataset(corpus=ds.corpus, queries=queries, qrels=qrels)


def judged_queries(ds: BeirDataset) -> tuple[list[str], list[str]]:
    """(query ids, texts) of the judged queries, sorted by id."""
    qids = sorted(q for q in ds.qrels if q in ds.queries)
    return qids, [ds.queries[q] for q in qids]


def corpus_texts(ds: BeirDataset) -> tuple[list[str], list[str]]:
    """(doc ids, 'title text' strings) in corpus order."""
    doc_ids = list(ds.corpus)
    return doc_ids, [beir_doc_text(ds.corpus[d]) for d in doc_ids]


def encode_corpus(
    p_encoder,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, bool]:
    """((N, D) float32 passage embeddings, reused from the cache?).

    `cache_dir=None` neither reads nor writes the cache. With several processes the entry is
    used only when every host hits it (encoding is a collective, so all hosts must take the same
    branch); on a miss only process 0 writes the entry.
    """
    max_length = int(max_length or p_encoder.max_length)

    def encode(t):
        return encode_texts(
            p_encoder, t, batch_size=batch_size, max_length=max_length, progress=progress
        )

    if cache_dir and multihost.process_count() > 1:
        key = corpus_cache.cache_manifest(p_encoder, doc_ids, texts, max_length)
        hit = corpus_cache.load_cached(cache_dir, key)
        if multihost.any_host(hit is None):
            hit = None  # someone misses: everyone encodes
        if hit is not None:
            corpus_cache.log_reuse(cache_dir, key, hit)
            return hit, True
        emb = np.asarray(encode(list(texts)), np.float32)
        if multihost.is_main():
            corpus_cache.save_cached(cache_dir, key, emb)
        return emb, False
    return corpus_cache.cached_embeddings(
        p_encoder, doc_ids, texts, cache_dir=cache_dir, max_length=max_length, encode_fn=encode
    )


def dense_run(
    q_encoder,
    index,
    qids: Sequence[str],
    q_texts: Sequence[str],
    doc_ids: Sequence,
    k: int,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
    mesh=None,
) -> Run:
    """Encodes the queries with the query tower, searches `index`, maps rows to doc ids.

    `mesh`: where the queries are encoded (default: all devices of all hosts); a host-local
    mesh lets every host encode all queries alone, as a sharded index that searches per host
    wants (the same query vectors as one host)."""
    q_emb = encode_texts(
        q_encoder,
        list(q_texts),
        batch_size=batch_size,
        max_length=max_length or q_encoder.max_length,
        progress=progress,
        mesh=mesh,
    )
    scores, rows = index.search(np.asarray(q_emb, np.float32), k)
    return rows_to_run(list(qids), scores, rows, doc_ids)  # indexed, never copied (chunk rows)


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
    Every process must call it; all get the same metrics.
    """
    t0 = time.time()
    qids, q_texts = judged_queries(ds)
    doc_ids, p_texts = corpus_texts(ds)
    warn_empty(q_texts, "queries")
    kw = {"batch_size": batch_size, "max_length": max_length, "progress": progress}
    p_emb, _ = encode_corpus(p_encoder, doc_ids, p_texts, **kw)
    k = min(max(max(int(k) for k in k_values), 10), len(doc_ids))
    index = ExactIndex(p_emb, similarity=similarity)
    run = dense_run(q_encoder, index, qids, q_texts, doc_ids, k, **kw)
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
