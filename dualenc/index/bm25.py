"""BM25 over raw text with bm25s (Lucene BM25, k1=1.5, b=0.75, English stop words, no stemmer).

This configuration reproduces the reference SciFact test nDCG@10 of 0.6617 (see the data README).
`BM25Index.build` indexes texts held in memory with bm25s (which also holds every document's
tokens); `build_streamed` writes the same index from a corpus read chunk by chunk
(`bm25_build`), in memory that does not grow with the corpus, and opens it memory-mapped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualenc.index.base import IndexManifest, check_doc_ids, read_manifest, write_manifest
from dualenc.index.bm25_build import tokenize, write_bm25

BM25_DIR = "bm25"
_DEFAULTS = {"k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en"}


def bm25_defaults() -> dict[str, Any]:
    """`BM25Index.build`'s default parameters (part of the BM25 cache key)."""
    return dict(_DEFAULTS)


def search_threads() -> int:
    """Threads for BM25 retrieval: the cores this process may use (each query is independent;
    the results do not depend on the count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class BM25Index:
    """Sparse lexical index: `search` (the `Index` interface, `inputs == "text"`) maps query
    strings to top-k corpus rows. Empty documents are indexed but never retrieved."""

    kind = "bm25"
    inputs = "text"

    def __init__(self, retriever, manifest: IndexManifest):
        self.retriever, self.manifest = retriever, manifest

    @classmethod
    def build(
        cls,
        texts: list[str],
        manifest: IndexManifest | None = None,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str = "en",
    ) -> BM25Index:
        import bm25s

        if not texts:
            from dualenc.io import InputError

            raise InputError("empty corpus: nothing to index")
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(tokenize(list(texts), stopwords), show_progress=False)
        params = {"k1": k1, "b": b, "method": method, "stopwords": stopwords}
        return cls(retriever, bm25_manifest(manifest, len(texts), params))

    @staticmethod
    def write_streamed(
        corpus, directory: str | os.PathLike, manifest: IndexManifest | None = None, **params
    ) -> IndexManifest:
        """Writes the index of `corpus` (a CorpusSource, a list of texts or an iterable of text
        lists) into `directory` as `save` lays it out, never holding the corpus (`bm25_build`);
        `params`: k1, b, method, stopwords, chunk_docs, bucket_nnz. Returns its manifest."""
        keys = ("k1", "b", "method", "stopwords")
        n = write_bm25(corpus, Path(directory) / BM25_DIR, **params)
        m = bm25_manifest(manifest, n, {k: params.get(k, _DEFAULTS[k]) for k in keys})
        write_manifest(directory, m)
        return m

    @classmethod
    def build_streamed(
        cls,
        corpus,
        manifest: IndexManifest | None = None,
        *,
        directory: str | os.PathLike | None = None,
        **params,
    ) -> BM25Index:
        """`write_streamed` into `directory` (default: a temp dir removed with the index), opened
        memory-mapped: the same search results as `build`, in memory that does not grow with
        the corpus. Set TMPDIR to a disk (not a tmpfs) for corpora bigger than memory."""
        tmp = None
        if directory is None:
            directory = tmp = tempfile.mkdtemp(prefix="dualenc-bm25-")
        try:
            m = cls.write_streamed(corpus, directory, manifest, **params)
            index = cls.load(directory)
        except BaseException:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        index.manifest = m
        if tmp:  # the mapped pages stay readable until unmapped, even after the files go
            weakref.finalize(index, shutil.rmtree, tmp, ignore_errors=True)
        return index

    def search_texts(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q,) -> (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N).

        Queries with no indexed term get rows -1 / scores 0 (nothing retrieved).
        """
        k = min(int(k), self.manifest.count)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        toks = tokenize(list(queries), self.manifest.params.get("stopwords", "en"))
        vocab = self.retriever.vocab_dict
        toks = [[t for t in q if t in vocab] for q in toks]
        rows = np.full((len(toks), k), -1, np.int64)
        scores = np.zeros((len(toks), k), np.float32)
        live = [i for i, t in enumerate(toks) if t]
        if live:
            r, s = self.retriever.retrieve(
                [toks[i] for i in live], k=k, show_progress=False, n_threads=search_threads()
            )
            rows[live], scores[live] = r, s
        rows[scores <= 0] = -1  # a zero BM25 score shares no term with the query
        return scores, rows

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `Index` interface: query texts (not vectors) -> (scores, rows), rows -1 = no hit."""
        if isinstance(queries, str) or (isinstance(queries, np.ndarray) and queries.ndim > 1):
            raise TypeError("BM25Index.search takes a list of query strings")
        return self.search_texts(list(queries), k)

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        self.retriever.save(str(d / BM25_DIR), show_progress=False)
        write_manifest(d, self.manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike, **_: Any) -> BM25Index:
        """The saved index, its score matrix memory-mapped (pages read as queries touch them),
        so a big corpus's index costs address space, not resident memory."""
        import bm25s

        m = read_manifest(directory, kind="bm25")
        return cls(bm25s.BM25.load(str(Path(directory) / BM25_DIR), mmap=True), m)


def bm25_manifest(manifest: IndexManifest | None, count: int, params: dict) -> IndexManifest:
    """`manifest` (or a new one) describing a BM25 index of `count` documents."""
    m = manifest or IndexManifest(kind="bm25", count=count)
    m.kind, m.count, m.dim, m.similarity = "bm25", count, 0, "bm25"
    m.params = {**params, "stemmer": None}
    return m


def bm25_run(
    index: BM25Index, qids: list[str], queries: list[str], doc_ids: list[str], k: int
) -> dict[str, dict[str, float]]:
    """Runs `queries` and maps rows to doc ids (queries without any hit get an empty ranking)."""
    from dualenc.index.base import rows_to_run

    check_doc_ids(doc_ids)
    scores, rows = index.search_texts(queries, k)
    return rows_to_run(qids, scores, rows, doc_ids)
