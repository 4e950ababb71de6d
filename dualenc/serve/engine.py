"""The search behind `dualenc.serve`: a saved index, its query encoder and an optional
cross-encoder, driven in batches with fixed shapes.

`SearchEngine.process` answers a batch of queries with one encode per length bucket, one index
search and one cross-encoder pass. Every array it hands to a jitted function has a shape from
`ServeConfig` (query rows padded to a batch bucket, tokens to a length bucket, pairs to the
reranker's buckets, one first-stage depth), so `warm_up` compiles them all and no request
compiles again: `compile_count()` counts XLA compiles process-wide to prove it.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Any

import jax
import numpy as np

import dualenc
from dualenc.index import load_doc_ids, load_index
from dualenc.index.fusion import METHODS, fuse
from dualenc.inference import rerank
from dualenc.inference.encode import beir_doc_text, doc_fields
from dualenc.io import InputError
from dualenc.retrieval.search import Searcher
from dualenc.serve import snippets
from dualenc.serve.config import ServeConfig, bucket
from dualenc.serve.query_encoder import QueryEncoder

# jax.monitoring event recorded once per XLA backend compile (jax._src.dispatch names it).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = {"count": 0, "registered": False}
_compiles_lock = threading.Lock()


def compile_count() -> int:
    """XLA compiles in this process since the first call (counts every jitted program)."""
    with _compiles_lock:
        if not _compiles["registered"]:

            def listener(event: str, _duration: float, **_kw) -> None:
                if event == COMPILE_EVENT:
                    _compiles["count"] += 1

            jax.monitoring.register_event_duration_secs_listener(listener)
            _compiles["registered"] = True
        return _compiles["count"]


@dataclasses.dataclass(frozen=True)
class Query:
    """One query of a request: its text, the hits wanted, and whether to rerank."""

    text: str
    k: int
    rerank: bool


@dataclasses.dataclass
class Batch:
    """A searched batch on its way to responses: its items, hits best first, stage times."""

    items: list[tuple[Query, float]]
    hits: list[list[dict]]
    started: float  # time.perf_counter() when its search began
    encode_s: float
    search_s: float
    rerank_s: float


class SearchEngine:
    """A loaded index dir (+ BM25 index for hybrid, + cross-encoder), answering query batches."""

    def __init__(
        self,
        index_dir: str,
        *,
        rerank_model: str = "",
        rerank_max_length: int = 0,
        bm25_index: str = "",
        hybrid_weight: float = 1.0,
        fusion: str = "minmax",
        config: ServeConfig | None = None,
    ):
        self.config = config or ServeConfig()
        self.searcher = Searcher(index_dir)  # index, query tower, doc ids, corpus
        self.manifest = self.searcher.manifest
        self.bm25, self.hybrid_weight, self.fusion = None, float(hybrid_weight), fusion
        if bm25_index:
            self._open_bm25(bm25_index)
        self.reranker = None
        if rerank_model:  # pairs truncated at rerank_max_length (0: the model's limit)
            self.reranker = rerank.load_reranker(rerank_model, max_length=rerank_max_length or None)
        if self.reranker is not None and not self.searcher.corpus:
            raise InputError(
                f"reranking reads the documents, but the index's corpus file "
                f"{self.manifest.corpus_path!r} is missing",
                field="rerank_model",
            )
        self.depth = self.config.depth(self.reranker is not None)
        self.queries = None  # the query encoder (None for a BM25 index)
        if self.searcher.encoder is not None:
            self.queries = QueryEncoder(
                self.searcher.encoder, self.manifest.max_length, self.config
            )
        self.warm_compiles = 0
        self.ready_compiles: int | None = None

    def _open_bm25(self, path: str) -> None:
        if self.searcher.index.inputs == "text":
            raise InputError("a hybrid needs a dense --index beside the BM25 one", field="index")
        if not 0 <= self.hybrid_weight < 1e6:
            raise InputError(f"must be ≥ 0, got {self.hybrid_weight}", field="hybrid_weight")
        if self.fusion not in METHODS:
            raise InputError(f"unknown fusion {self.fusion!r}; one of {METHODS}", field="fusion")
        self.bm25 = load_index(path)
        if self.bm25.inputs != "text":
            raise InputError("not a BM25 index", path=path, field="bm25_index")
        if load_doc_ids(path) != self.searcher.doc_ids:
            raise InputError("indexes other documents than --index", path=path)

    @property
    def kind(self) -> str:
        return "hybrid" if self.bm25 is not None else self.manifest.kind

    def _dense(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) (Q, depth') of the dense index, queries padded to batch buckets."""
        cfg, out_s, out_r = self.config, [], []
        for start in range(0, len(vecs), cfg.max_batch):
            part = vecs[start : start + cfg.max_batch]
            padded = np.zeros((bucket(len(part), cfg.batch_buckets), part.shape[1]), np.float32)
            padded[: len(part)] = part
            s, r = self.searcher.index.search(padded, self.depth)
            out_s.append(s[: len(part)])
            out_r.append(r[: len(part)])
        return np.concatenate(out_s), np.concatenate(out_r)

    def warm_up(self) -> int:
        """Compiles every shape serving uses (encoder, index, cross-encoder); returns how many
        XLA compiles that took. After it, `compiles_since_ready()` stays 0 under any load."""
        before, cfg = compile_count(), self.config
        if self.queries is not None:
            self.queries.warm_up()
            for rows in cfg.batch_buckets:
                zeros = np.zeros((rows, self.manifest.dim), np.float32)
                self.searcher.index.search(zeros, self.depth)
        if self.reranker is not None:
            rerank.warm_up(self.reranker, cfg.rerank_batch)
        self.process([(Query("warm up", 1, self.reranker is not None), 0.0)])  # host-side paths
        self.ready_compiles = compile_count()
        self.warm_compiles = self.ready_compiles - before
        return self.warm_compiles

    def compiles_since_ready(self) -> int | None:
        return None if self.ready_compiles is None else compile_count() - self.ready_compiles

    # -- one batch ------------------------------------------------------------------------------
    def first_stage(
        self, texts: list[str], keep: list[int] | None = None
    ) -> tuple[list[list[dict]], float, float]:
        """Per query its best `keep[i]` (default: all `depth`) hits [{doc_id, first_stage_score,
        first_stage_rank, stage_ranks}] best first; seconds spent encoding and searching. The
        index always returns `depth` (one compiled shape); only the hits kept become dicts."""
        t0 = time.perf_counter()
        vecs = self.queries.encode(texts) if self.queries is not None else None
        t1 = time.perf_counter()
        ids, keep = self.searcher.doc_ids, keep or [self.depth] * len(texts)
        if vecs is None:
            runs = _runs(self.searcher.index.search(texts, self.depth), ids, keep)
            stages = {}
        elif self.bm25 is None:
            runs, stages = _runs(self._dense(vecs), ids, keep), {}
        else:  # the fusion sees both full runs
            full = [self.depth] * len(texts)
            dense = _runs(self._dense(vecs), ids, full)
            lex = _runs(self.bm25.search(texts, self.depth), ids, full)
            keys = [str(i) for i in range(len(texts))]
            fused = fuse(
                dict(zip(keys, lex, strict=True)),
                dict(zip(keys, dense, strict=True)),
                self.fusion,
                self.hybrid_weight,
                depth=self.depth,
            )
            runs, stages = [fused[q] for q in keys], {"bm25": lex, "dense": dense}
        out = []
        for qi, run in enumerate(runs):
            ranks = {name: {d: r for r, d in enumerate(st[qi], 1)} for name, st in stages.items()}
            out.append(
                [
                    {
                        "doc_id": d,
                        "first_stage_score": s,
                        "first_stage_rank": rank,
                        "stage_ranks": {n: rk.get(d) for n, rk in ranks.items()},
                    }
                    for rank, (d, s) in enumerate(itertools.islice(run.items(), keep[qi]), 1)
                ]
            )
        return out, t1 - t0, time.perf_counter() - t1

    def rerank(self, texts: list[str], hits: list[list[dict]], which: list[bool]) -> None:
        """Rescores each chosen query's top `rerank_top` with the cross-encoder, in one call."""
        top, corpus = self.config.rerank_top, self.searcher.corpus
        qs, ps, where = [], [], []
        for qi, (text, h) in enumerate(zip(texts, hits, strict=True)):
            if which[qi]:
                for j, hit in enumerate(h[:top]):
                    qs.append(text)
                    ps.append(beir_doc_text(corpus.get(hit["doc_id"]) or {}))
                    where.append((qi, j))
        if not qs:
            return
        logits = rerank.score_pairs(self.reranker, qs, ps, batch_size=self.config.rerank_batch)
        for (qi, j), s in zip(where, rerank.relevance(logits).tolist(), strict=True):
            hits[qi][j]["rerank_score"] = float(s)
        for qi in {qi for qi, _ in where}:
            head = sorted(hits[qi][:top], key=lambda h: -h["rerank_score"])  # stable on ties
            hits[qi] = head + hits[qi][top:]

    def search(self, items: list[tuple[Query, float]]) -> Batch:
        """The device part of a batch, [(query, seconds it waited)]: encode, search, rerank."""
        t0 = time.perf_counter()
        texts = [q.text for q, _ in items]
        which = [q.rerank and self.reranker is not None for q, _ in items]
        top = self.config.rerank_top
        keep = [max(q.k, top) if rr else q.k for (q, _), rr in zip(items, which, strict=True)]
        hits, encode_s, search_s = self.first_stage(texts, keep)
        t1 = time.perf_counter()
        if any(which):
            self.rerank(texts, hits, which)
        return Batch(items, hits, t0, encode_s, search_s, time.perf_counter() - t1)

    def respond(self, batch: Batch) -> list[dict]:
        """The host part: one response per query (hits with titles, snippets, marks; times)."""
        out = []
        for (q, waited), h in zip(batch.items, batch.hits, strict=True):
            hits = self._present(q, h[: q.k])
            timing = {
                "queue_ms": waited * 1e3,
                "encode_ms": batch.encode_s * 1e3,
                "search_ms": batch.search_s * 1e3,
                "rerank_ms": batch.rerank_s * 1e3 if q.rerank else 0.0,
                "total_ms": (waited + time.perf_counter() - batch.started) * 1e3,
            }
            out.append(
                {
                    "query": q.text,
                    "k": q.k,
                    "reranked": q.rerank,
                    "hits": hits,
                    "timing": {k: round(v, 3) for k, v in timing.items()},
                    "batch_size": len(batch.items),
                }
            )
        return out

    def process(self, items: list[tuple[Query, float]]) -> list[dict]:
        """Answers a batch: [(query, seconds it waited)] -> one response dict per query."""
        return self.respond(self.search(items))

    def _present(self, q: Query, hits: list[dict]) -> list[dict]:
        pattern = snippets.matcher(snippets.query_terms(q.text))
        width = self.config.snippet_chars
        out = []
        for rank, h in enumerate(hits, 1):
            title, text = doc_fields(self.searcher.corpus.get(h["doc_id"]) or {})
            snip, marks = snippets.snippet(text, pattern, width)
            rerank_score = h.get("rerank_score") if q.rerank else None
            out.append(
                {
                    "rank": rank,
                    "doc_id": h["doc_id"],
                    "title": title,
                    "title_marks": [list(s) for s in snippets.term_spans(title, pattern)],
                    "snippet": snip,
                    "marks": marks,
                    "score": rerank_score if rerank_score is not None else h["first_stage_score"],
                    "first_stage_score": h["first_stage_score"],
                    "first_stage_rank": h["first_stage_rank"],
                    "rerank_score": rerank_score,
                    "stage_ranks": h["stage_ranks"],
                }
            )
        return out

    def info(self) -> dict[str, Any]:
        m, cfg = self.manifest, self.config
        return {
            "dualenc_version": dualenc.__version__,
            "model": m.model_source or None,
            "index_kind": self.kind,
            "corpus_size": m.count,
            "dim": m.dim or None,
            "similarity": m.similarity if self.searcher.encoder is not None else None,
            "query_max_length": self.queries.max_length if self.queries else None,
            "hybrid": None
            if self.bm25 is None
            else {"weight": self.hybrid_weight, "fusion": self.fusion},
            "rerank_model": self.reranker.source if self.reranker is not None else None,
            "rerank_top": cfg.rerank_top if self.reranker is not None else None,
            "rerank_max_length": self.reranker.max_length if self.reranker is not None else None,
            "limits": {
                "max_k": cfg.max_k,
                "default_k": cfg.default_k,
                "max_query_chars": cfg.max_query_chars,
                "max_batch_queries": cfg.max_batch_queries,
                "max_body_bytes": cfg.max_body_bytes,
            },
            "batching": {
                "max_batch": cfg.max_batch,
                "max_wait_ms": cfg.max_wait_ms,
                "batch_buckets": list(cfg.batch_buckets),
                "length_buckets": list(self.queries.lengths if self.queries else ()),
                "packed": bool(self.queries and self.queries.packed),
                "first_stage_depth": self.depth,
            },
            "compiles": {"warm_up": self.warm_compiles, "since_ready": self.compiles_since_ready()},
        }


def _runs(
    found: tuple[np.ndarray, np.ndarray], doc_ids: list[str], keep: list[int]
) -> list[dict[str, float]]:
    """Per query its best `keep[i]` {doc id: score} from (scores, rows), dropping padding
    rows (< 0)."""
    return [
        {doc_ids[r]: x for x, r in zip(s[:n].tolist(), rows[:n].tolist(), strict=True) if r >= 0}
        for s, rows, n in zip(*found, keep, strict=True)
    ]
