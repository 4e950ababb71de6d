"""Hard-negative mining: BM25 and/or dense candidates, filtered against false negatives.

The miner itself (what `data.negatives` runs for `python -m dualenc.mine` and the trainers'
in-run dense mining): per query `mine` takes the retriever's ranks
[range_min, range_max) over the candidate pool, drops the query's positives, empty passages and
passages holding an answer (whole word, any case), scores what is left (the retriever, or a
cross-encoder), drops candidates too close to the positive's score (likely unjudged positives:
the "score ≥ 95 % of the positive's" rule of NV-Retriever) and keeps `num_negatives` of the rest,
`top` (rank order) or `random` (seeded per query).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from dualenc import multihost
from dualenc.data.beir import load_beir
from dualenc.data.examples import TrainExample, passage_text
from dualenc.data.nq_toy import answer_pattern
from dualenc.index.bm25 import BM25Index, tokenize
from dualenc.io import InputError

METHODS = ("bm25", "dense", "both")
SAMPLING = ("top", "random")
# Summary keys in the order the filters run.
FILTERS = (
    "positive",
    "empty",
    "answer",
    "duplicate",
    "max_score",
    "absolute_margin",
    "max_relative_score",
    "not_sampled",
)


# --------------------------------------------------------------------------- the general miner


@dataclasses.dataclass
class MiningQuery:
    """One query: its positives as pool rows, the rows never to return, its answer strings."""

    qid: str
    text: str
    pos_rows: list[int]
    excluded: set[int]
    answers: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class MiningData:
    """Queries plus the candidate pool (`texts[row]`, title kept apart for DPR output)."""

    queries: list[MiningQuery]
    texts: list[str]
    titles: list[str]
    bodies: list[str]
    ids: list[str] | None = None  # BEIR doc id of each row (None for training files)


@dataclasses.dataclass
class MineConfig:
    """What to mine; `range_*` are 0-based ranks in the retriever's ranking of the whole pool."""

    method: str = "bm25"
    num_negatives: int = 5
    range_min: int = 0
    range_max: int = 50
    absolute_margin: float | None = None  # drop if score > positive's - margin
    max_relative_score: float | None = None  # drop if score >= this × positive's (0.95)
    max_score: float | None = None  # drop if score > this
    sampling: str = "top"
    seed: int = 0
    answer_filter: bool = True

    def check(self) -> None:
        """Raises InputError (naming the flag) on values that cannot work."""
        if self.method not in METHODS:
            raise InputError(f"expected one of {METHODS}, got {self.method!r}", field="method")
        if self.sampling not in SAMPLING:
            raise InputError(f"expected one of {SAMPLING}, got {self.sampling!r}", field="sampling")
        if self.num_negatives < 1:
            raise InputError("must be ≥ 1", field="num_negatives")
        if not 0 <= self.range_min < self.range_max:
            raise InputError(
                f"need 0 ≤ range_min < range_max, got {self.range_min}, {self.range_max}",
                field="range_max",
            )


def data_from_examples(examples: Sequence[TrainExample]) -> MiningData:
    """Pool = every distinct passage text of the data; a query excludes all its positives' rows."""
    rows: dict[str, int] = {}
    for ex in examples:
        for t in (*ex.positives, *ex.negatives):
            rows.setdefault(t, len(rows))
    texts = list(rows)
    queries = []
    for ex in examples:
        pos = [rows[t] for t in dict.fromkeys(ex.positives)]
        queries.append(MiningQuery(ex.qid, ex.query, pos, set(pos), list(ex.answers)))
    return MiningData(queries, texts, [""] * len(texts), texts)


def data_from_beir(path, split: str) -> MiningData:
    """Pool = the BEIR corpus (empty documents kept); every judged-relevant doc is excluded."""
    return data_from_dataset(load_beir(path, split, allow_empty_docs=True), path)


def data_from_dataset(ds, path) -> MiningData:
    """`data_from_beir` of an already loaded BeirDataset (`path` names it in errors)."""
    doc_ids = list(ds.corpus)
    row = {d: i for i, d in enumerate(doc_ids)}
    titles = [ds.corpus[d].title or "" for d in doc_ids]
    bodies = [ds.corpus[d].text or "" for d in doc_ids]
    texts = [passage_text(t, b) for t, b in zip(titles, bodies, strict=True)]
    queries = []
    for qid, judged in ds.qrels.items():
        pos = [row[d] for d, s in judged.items() if s >= 1 and d in row]
        if qid in ds.queries and pos:
            excluded = {row[d] for d, s in judged.items() if s > 0 and d in row}
            queries.append(MiningQuery(qid, ds.queries[qid], pos, excluded))
    if not queries:
        raise InputError("no judged query with a positive document", path=path)
    return MiningData(queries, texts, titles, bodies, doc_ids)


class BM25Scorer:
    """BM25 ranking and exact BM25 scores of given (query, row) pairs from the same index."""

    def __init__(self, texts: Sequence[str]):
        self.index = BM25Index.build_streamed(list(texts))  # = build, in bounded memory
        r = self.index.retriever
        self._vocab = r.vocab_dict
        s = r.scores
        indptr = np.asarray(s["indptr"], np.int64)
        cols = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        order = np.lexsort((s["indices"], cols))  # doc rows sorted within each token column
        self._indices, self._data, self._indptr = s["indices"][order], s["data"][order], indptr

    def search(self, queries: Sequence[str], k: int) -> np.ndarray:
        """(Q, k') ranked rows, -1 where nothing more shares a term with the query."""
        return self.index.search_texts(list(queries), k)[1]

    def score(self, queries: Sequence[str], rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """BM25 score of each listed row for its query (what `search` would rank it by)."""
        params = self.index.manifest.params
        toks = tokenize(list(queries), params.get("stopwords", "en"))
        out = []
        for q_toks, q_rows in zip(toks, rows, strict=True):
            q_rows = np.asarray(q_rows, np.int64)
            s = np.zeros(len(q_rows), np.float32)
            for t in q_toks:
                tid = self._vocab.get(t)
                if tid is None:
                    continue
                lo, hi = self._indptr[tid], self._indptr[tid + 1]
                pos = lo + np.searchsorted(self._indices[lo:hi], q_rows)
                hit = pos < hi
                hit[hit] = self._indices[pos[hit]] == q_rows[hit]
                s[hit] += self._data[pos[hit]]
            out.append(s)
        return out


class DenseScorer:
    """Exact search and dot / cosine scores from query embeddings and the pool's: an (N, D)
    array (searched on the mesh) or `EmbeddingShards` (searched shard by shard, each host its
    own, the scored rows read from the memory-mapped shards: a pool of millions)."""

    def __init__(self, q_emb: np.ndarray, p_emb, similarity: str = "cos"):
        from dualenc.index.exact import ExactIndex, l2_normalize
        from dualenc.index.sharded import ShardedExactIndex

        cos = similarity == "cos"
        self.q_emb = (l2_normalize(q_emb) if cos else q_emb).astype(np.float32)
        if isinstance(p_emb, np.ndarray):
            p = (l2_normalize(p_emb) if cos else p_emb).astype(np.float32)
            self.index = ExactIndex(p, similarity="dot")
            self._rows = lambda rows: p[rows]
        else:
            self.index = ShardedExactIndex(p_emb, similarity="cos" if cos else "dot")
            self._rows = lambda rows: (l2_normalize if cos else np.asarray)(p_emb.rows(rows))

    def search(self, k: int) -> np.ndarray:
        return self.index.search(self.q_emb, k)[1]

    def score(self, q_idx: Sequence[int], rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return [
            self._rows(np.asarray(r, np.int64)) @ self.q_emb[i]
            for i, r in zip(q_idx, rows, strict=True)
        ]


def _interleave(lists: Sequence[Sequence[int]]) -> list[int]:
    """a0 b0 a1 b1 …, first occurrence kept (the union of two rankings, fairly ordered)."""
    out: dict[int, None] = {}
    for i in range(max((len(x) for x in lists), default=0)):
        out.update((x[i], None) for x in lists if i < len(x))
    return list(out)


def _cheap_filters(q: MiningQuery, cands: list[int], data: MiningData, cfg, drops: Counter):
    """Drops positives, empty passages, answer-bearing passages and repeats (counted)."""
    pos_texts = {data.texts[r] for r in q.pos_rows}
    answer = answer_pattern(q.answers) if cfg.answer_filter else None
    out, seen = [], set()
    for r in cands:
        text = data.texts[r]
        if r in q.excluded or text in pos_texts:
            drops["positive"] += 1
        elif not text.strip():
            drops["empty"] += 1
        elif answer is not None and answer.search(text):
            drops["answer"] += 1
        elif text in seen:
            drops["duplicate"] += 1
        else:
            seen.add(text)
            out.append(r)
    return out


def candidate_rows(data: MiningData, cfg: MineConfig, bm25=None, dense=None) -> list[list[int]]:
    """Per query: rows ranked [range_min, range_max) by the method (interleaved for `both`)."""
    k = min(cfg.range_max, len(data.texts))
    ranked = []  # dense first: for `both` the interleaving starts with the dense top hit
    if dense is not None:
        ranked.append(dense.search(k))
    if bm25 is not None:
        ranked.append(bm25.search([q.text for q in data.queries], k))
    out = []
    for i in range(len(data.queries)):
        windows = [[int(r) for r in rows[i][cfg.range_min : k] if r >= 0] for rows in ranked]
        out.append(_interleave(windows))
    return out


def _margin_filters(cands, scores, pos_score: float, cfg: MineConfig, drops: Counter):
    keep = []
    for r, s in zip(cands, scores, strict=True):
        if cfg.max_score is not None and s > cfg.max_score:
            drops["max_score"] += 1
        elif cfg.absolute_margin is not None and s > pos_score - cfg.absolute_margin:
            drops["absolute_margin"] += 1
        elif cfg.max_relative_score is not None and s >= cfg.max_relative_score * pos_score:
            drops["max_relative_score"] += 1
        else:
            keep.append((r, float(s)))
    return keep


def _sample(keep, cfg: MineConfig, q_index: int, drops: Counter):
    n = cfg.num_negatives
    if len(keep) > n:
        drops["not_sampled"] += len(keep) - n
        if cfg.sampling == "top":
            keep = keep[:n]
        else:  # seeded per (seed, query): reproducible whatever the other queries are
            rng = np.random.default_rng([cfg.seed, q_index])
            keep = [keep[i] for i in sorted(rng.choice(len(keep), n, replace=False))]
    return keep


@dataclasses.dataclass
class Mined:
    """One mined query: positives and negatives (pool rows) with the scores used to filter."""

    query: MiningQuery
    pos_scores: list[float]
    neg_rows: list[int]
    neg_scores: list[float]


def mine(
    data: MiningData,
    cfg: MineConfig,
    score_fn,
    cand: list[list[int]],
    *,
    progress: bool = True,
    chunk: int = 1024,
):
    """Filters and samples the candidates; `score_fn(q_indices, rows lists)` → score arrays.

    Returns (mined queries that kept ≥ 1 negative, summary counts). The positive's score is the
    best score among the query's positives.
    """
    cfg.check()
    drops: Counter = Counter()
    out, n = [], len(data.queries)
    bar = tqdm(total=n, desc="mine", unit="query", disable=not progress or not multihost.is_main())
    for start in range(0, n, chunk):  # chunks: batched scoring, a progress bar that moves
        idx = list(range(start, min(start + chunk, n)))
        qs = [data.queries[i] for i in idx]
        kept = [_cheap_filters(q, cand[i], data, cfg, drops) for q, i in zip(qs, idx, strict=True)]
        pos_scores = score_fn(idx, [q.pos_rows for q in qs])
        cand_scores = score_fn(idx, kept)
        for j, i in enumerate(idx):
            p = [float(s) for s in pos_scores[j]]
            keep = _margin_filters(kept[j], cand_scores[j], max(p), cfg, drops)
            keep = _sample(keep, cfg, i, drops)
            if keep:
                out.append(Mined(qs[j], p, [r for r, _ in keep], [s for _, s in keep]))
        bar.update(len(idx))
    bar.close()
    summary = {
        "queries": len(data.queries),
        "pool": len(data.texts),
        "candidates": sum(len(c) for c in cand),
        **{f"dropped_{k}": drops[k] for k in FILTERS},
        "negatives": sum(len(m.neg_rows) for m in out),
        "queries_without_negatives": len(data.queries) - len(out),
    }
    return out, summary
