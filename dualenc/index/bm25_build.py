"""Streamed BM25 indexing (issue 25): the files `bm25s.BM25.index` + `save` would write, built
without holding the corpus or its token lists.

`bm25s.BM25.index` keeps every document's tokens as Python lists (~10 KB a passage: ~85 GiB for
MS MARCO's 8.8M). Here the corpus arrives in chunks of texts; each chunk is tokenised by the same
`bm25s.tokenize` call, reduced to (term id, doc row, term frequency) records appended to a temp
file, and dropped. Only per-term and per-document numpy arrays stay resident (the vocab dict,
document frequencies, 4 B a document of lengths). The records are then scored with bm25s's own
idf and tf functions over the same float64 -> float32 steps (so the scores are bit-identical to
bm25s's), and put in CSC order one column range at a time (buckets of at most `bucket_nnz`
records, a counting sort by column range, then a stable sort by term inside the bucket), each
bucket appended to the .npy files: the writes are sequential and memory stays one bucket
however big the index (a memmap written in scattered positions would keep its dirty pages
resident and thrash once the index outgrows RAM).

Vocab ids follow first occurrence (bm25s numbers tokens in `set` order, which changes with
PYTHONHASHSEED); a query's score sums its tokens' columns in query order, whatever their ids, so
search results are the same. bm25l and bm25+ need a non-occurrence array: they are built in
memory by bm25s (one log line).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from dualenc.io import InputError, atomic_dir

log = logging.getLogger(__name__)
STREAMED_METHODS = ("lucene", "robertson", "atire")
CHUNK_DOCS = 16384  # texts tokenised at a time (~70 B a token at the peak: 140 MB at 120 a text)
BUCKET_NNZ = 1 << 21  # (term, doc) records scored and sorted in memory at a time (~80 B each)
SCATTER_BLOCK = 1 << 20  # records read at a time to split them by bucket (~50 B each)
PAIR = np.dtype([("term", "<i4"), ("doc", "<i4"), ("tf", "<i4")])
DATA, INDICES, INDPTR = "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"
VOCAB, PARAMS = "vocab.index.json", "params.index.json"
_MAX_ROWS = np.iinfo(np.int32).max  # bm25s's int_dtype for doc rows and term ids


def tokenize(texts: list[str], stopwords: str, return_ids: bool = False):
    """bm25s tokens of each text (no stemming), as the index is built and searched with;
    `return_ids`: bm25s's (ids per text, vocab) of the same tokens (what the builder keeps)."""
    import bm25s

    return bm25s.tokenize(
        texts, stopwords=stopwords, stemmer=None, show_progress=False, return_ids=return_ids
    )


def text_chunks(corpus, chunk_docs: int = CHUNK_DOCS) -> Iterator[list[str]]:
    """Lists of texts to index in order: a CorpusSource's rows ('title text') read `chunk_docs`
    rows at a time, a list of strings cut in slices, or any iterable of lists as it comes."""
    if hasattr(corpus, "read") and hasattr(corpus, "__len__"):
        from dualenc.data.corpus_source import texts_of

        for lo in range(0, len(corpus), chunk_docs):
            yield texts_of(corpus, lo, min(lo + chunk_docs, len(corpus)))
    elif isinstance(corpus, list | tuple) and (not corpus or isinstance(corpus[0], str)):
        for lo in range(0, len(corpus), chunk_docs):
            yield list(corpus[lo : lo + chunk_docs])
    else:
        yield from corpus


class _Counts:
    """Pass 1: vocab (token -> id, first occurrence), document frequencies and lengths; each
    chunk's (term, doc, tf) records, sorted by doc then term, are appended to `file`."""

    def __init__(self, file):
        self.file, self.vocab = file, {}
        self.df = np.zeros(1024, np.int64)
        self.lengths: list[np.ndarray] = []
        self.n_docs = self.nnz = 0

    def add(self, texts: list[str], stopwords: str) -> None:
        ids, local = tokenize(list(texts), stopwords, return_ids=True)
        lut = np.empty(len(local), np.int64)  # chunk-local token id -> global id
        for token, i in local.items():
            lut[i] = self.vocab.setdefault(token, len(self.vocab))
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        terms = lut[np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))]
        rows = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
        v = max(len(self.vocab), 1)
        keys, tf = np.unique(rows * v + terms, return_counts=True)  # one key per (doc, term)
        rec = np.empty(len(keys), PAIR)
        rec["doc"], rec["term"], rec["tf"] = keys // v + self.n_docs, keys % v, tf
        rec.tofile(self.file)
        if len(self.vocab) > len(self.df):
            grown = np.zeros(max(len(self.vocab), 2 * len(self.df)), np.int64)
            grown[: len(self.df)] = self.df
            self.df = grown
        self.df += np.bincount(rec["term"], minlength=len(self.df))
        self.lengths.append(lengths.astype(np.int32))
        self.n_docs, self.nnz = self.n_docs + len(ids), self.nnz + len(rec)
        if self.n_docs > _MAX_ROWS or len(self.vocab) > _MAX_ROWS:
            raise ValueError(f"{self.n_docs} docs / {len(self.vocab)} terms overflow int32 ids")


def scorer(method: str, k1: float, b: float, delta: float, df: np.ndarray, doc_len: np.ndarray):
    """records (PAIR) -> float32 BM25 scores, computed as bm25s computes them: idf per term in
    Python floats stored as float32, avg length = mean of int lengths (float64), tf as float32
    through bm25s's tf function with the float64 doc length, idf * tfc rounded to float32."""
    from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer  # the very same functions

    n_docs = len(doc_len)
    idf_fn, tfc_fn = _select_idf_scorer(method), _select_tfc_scorer(method)
    idf = np.array([idf_fn(d, N=n_docs) for d in df.tolist()], np.float32)  # every df >= 1
    avg = np.float64(doc_len.sum(dtype=np.int64)) / n_docs  # exact: an integer sum < 2**53

    def score(rec: np.ndarray) -> np.ndarray:
        tf = rec["tf"].astype(np.float32)
        tfc = tfc_fn(tf_array=tf, l_d=doc_len[rec["doc"]], l_avg=avg, k1=k1, b=b, delta=delta)
        return (idf[rec["term"]] * tfc).astype(np.float32)

    return score


def bucket_bounds(indptr: np.ndarray, bucket_nnz: int) -> list[int]:
    """Column boundaries [0, ..., V]: each range holds at most `bucket_nnz` records, or one
    column (a term in more documents than that)."""
    n_cols, bounds = len(indptr) - 1, [0]
    while bounds[-1] < n_cols:
        lo = bounds[-1]
        hi = int(np.searchsorted(indptr, indptr[lo] + bucket_nnz, side="right")) - 1
        bounds.append(min(max(hi, lo + 1), n_cols))
    return bounds


def _scatter(pairs: Path, bounds: list[int], block: int) -> list[Path]:
    """Splits the records (in doc order) into one file per column range, keeping doc order."""
    if len(bounds) == 2:
        return [pairs]
    paths = [pairs.with_name(f"bucket{j}.bin") for j in range(len(bounds) - 1)]
    edges = np.asarray(bounds[1:-1])
    with open(pairs, "rb") as f:
        while len(rec := np.fromfile(f, PAIR, count=block)):
            which = np.searchsorted(edges, rec["term"], side="right")
            order = np.argsort(which, kind="stable")
            rec, which = rec[order], which[order]
            cuts = np.searchsorted(which, np.arange(len(paths) + 1))
            for j in np.unique(which):
                with open(paths[j], "ab") as g:
                    rec[cuts[j] : cuts[j + 1]].tofile(g)
    pairs.unlink()
    return paths


@contextlib.contextmanager
def _npy_writer(path: Path, dtype, n: int):
    """An open .npy file of `n` items whose header is written: append the items in order."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (n,)})
        start = f.tell()
        yield f
        if f.tell() - start != n * dtype.itemsize:
            raise RuntimeError(f"{path}: wrote {f.tell() - start} bytes for {n} {dtype} items")


def _write_csc(out: Path, paths: list[Path], bounds: list[int], indptr, score: Callable) -> None:
    """data / indices in CSC order (columns = terms, docs increasing within one) from the
    bucket files, one bucket in memory at a time; indptr as bm25s's numpy backend (int64)."""
    nnz = int(indptr[-1])
    with (
        _npy_writer(out / DATA, np.float32, nnz) as fd,
        _npy_writer(out / INDICES, np.int32, nnz) as fi,
    ):
        for j, path in enumerate(paths):
            rec = np.fromfile(path, PAIR) if path.exists() else np.empty(0, PAIR)
            want = int(indptr[bounds[j + 1]] - indptr[bounds[j]])
            if len(rec) != want:
                raise RuntimeError(f"{path}: {len(rec)} records, expected {want}")
            rec = rec[np.argsort(rec["term"], kind="stable")]  # stable: doc order kept
            score(rec).tofile(fd)
            np.ascontiguousarray(rec["doc"]).tofile(fi)
            path.unlink(missing_ok=True)
    np.save(out / INDPTR, indptr)


def _write_meta(out: Path, vocab: dict[str, int], n_docs: int, ref) -> None:
    """vocab.index.json and params.index.json as `bm25s.BM25.save` writes them."""
    import bm25s

    vocab[""] = len(vocab)  # `index(create_empty_token=True)`: "" after the last id, no column
    with open(out / VOCAB, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    params = {
        k: getattr(ref, k)
        for k in ("k1", "b", "delta", "method", "idf_method", "dtype", "int_dtype")
    }
    params.update(num_docs=n_docs, version=bm25s.__version__, backend=ref.backend)
    with open(out / PARAMS, "w") as f:
        json.dump(params, f, indent=4)


def _build_in_memory(chunks: Iterable[list[str]], out: Path, ref, stopwords: str) -> int:
    """bm25s's own index + save (methods whose scores need the non-occurrence array)."""
    log.info("BM25 method %r needs bm25s's in-memory index: the corpus is held", ref.method)
    texts = [t for chunk in chunks for t in chunk]
    if not texts:
        raise InputError("empty corpus: nothing to index")
    ref.index(tokenize(texts, stopwords), show_progress=False)
    ref.save(str(out), show_progress=False)
    return len(texts)


def write_bm25(
    corpus,
    directory: str | os.PathLike,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    method: str = "lucene",
    stopwords: str = "en",
    chunk_docs: int = CHUNK_DOCS,
    bucket_nnz: int = BUCKET_NNZ,
) -> int:
    """Writes the bm25s index of `corpus` (see `text_chunks`) into `directory`, atomically (a
    temp dir beside it, temp files inside, then renamed); returns the number of documents.

    `bm25s.BM25.load(directory, mmap=True)` opens it; the scores equal `bm25s.BM25.index`'s."""
    import bm25s

    ref = bm25s.BM25(k1=k1, b=b, method=method)  # bm25s's defaults (delta, dtypes, backend)
    chunks = text_chunks(corpus, chunk_docs)
    with atomic_dir(directory) as out:
        if method not in STREAMED_METHODS:
            return _build_in_memory(chunks, out, ref, stopwords)
        if (ref.dtype, ref.int_dtype) != ("float32", "int32"):
            raise ValueError(f"unsupported bm25s dtypes {ref.dtype}, {ref.int_dtype}")
        work = out / ".work"
        work.mkdir()
        with open(work / "pairs.bin", "wb") as f:
            counts = _Counts(f)
            for texts in chunks:
                if texts:
                    counts.add(texts, stopwords)
        if counts.n_docs == 0:
            raise InputError("empty corpus: nothing to index")
        if not counts.vocab:
            raise InputError("no document has an indexable term (all empty or stop words)")
        df = counts.df[: len(counts.vocab)]
        doc_len = np.concatenate(counts.lengths)
        del counts.lengths
        indptr = np.zeros(len(df) + 1, np.int64)
        np.cumsum(df, out=indptr[1:])  # column j holds df[j] records: one per (doc, term)
        bounds = bucket_bounds(indptr, bucket_nnz)
        log.info(
            "BM25: %d docs, %d terms, %d postings in %d buckets",
            counts.n_docs,
            len(df),
            counts.nnz,
            len(bounds) - 1,
        )
        paths = _scatter(work / "pairs.bin", bounds, min(bucket_nnz, SCATTER_BLOCK))
        score = scorer(method, ref.k1, ref.b, ref.delta, df, doc_len)
        _write_csc(out, paths, bounds, indptr, score)
        shutil.rmtree(work)
        _write_meta(out, counts.vocab, counts.n_docs, ref)
        return counts.n_docs
