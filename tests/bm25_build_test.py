"""The streamed BM25 builder (`index.bm25_build`, issue 25): the same CSC arrays and bit-identical
search results as `bm25s.BM25.index`, whatever the chunk and bucket sizes; the corpus read in
bounded ranges and the postings sorted in bounded buckets; the evaluation's BM25 cache keyed on
the streamed source."""

from __future__ import annotations

import json
import random
from pathlib import Path

import bm25s
import numpy as np
import pytest
from tiny_data import write_beir

from dualenc.data import corpus_source
from dualenc.data.beir import Doc
from dualenc.index import bm25_build
from dualenc.index.base import IndexManifest
from dualenc.index.bm25 import BM25Index
from dualenc.inference import corpus_cache
from dualenc.io import InputError
from dualenc.retrieval import evaluate

WORDS = (
    "apple river stone cloud tiger piano garden rocket silver forest castle ocean violin "
    "café naïve straße 東京 δέλτα ÉCOLE the of and a is"  # unicode, case, stop words, 1 letter
).split()
QUERIES = [
    "apple river",
    "café naïve 東京",
    "Tiger tiger TIGER piano",
    "the of and",  # stop words only: nothing retrieved
    "unknownword zzz",
    "tok3 tok17 forest",
    "δέλτα école straße silver castle ocean",
]


def _texts(n: int = 300, seed: int = 0) -> list[str]:
    """Docs of very different lengths with repeated terms; some empty, blank, punctuation or
    stop words only (no indexable term)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([0, 1, 2, 5, 12, 40, 150])
        doc = " ".join(rng.choice(WORDS) for _ in range(k))
        if i % 4:
            doc += f" tok{i % 23} tok{i % 23}"
        out.append(doc)
    out[5], out[6], out[7], out[8] = "", "   ", "!!! ... ?", "the of and a"
    return out


def _bm25s_dir(texts, directory: Path, method: str, k1: float = 1.5, b: float = 0.75) -> Path:
    ref = bm25s.BM25(k1=k1, b=b, method=method)
    ref.index(bm25_build.tokenize(texts, "en"), show_progress=False)
    ref.save(str(directory), show_progress=False)
    return directory


def _arrays(directory: Path) -> dict:
    names = {"data": bm25_build.DATA, "indices": bm25_build.INDICES, "indptr": bm25_build.INDPTR}
    out = {k: np.load(directory / v) for k, v in names.items()}
    out["vocab"] = json.loads((directory / bm25_build.VOCAB).read_text(encoding="utf-8"))
    out["params"] = json.loads((directory / bm25_build.PARAMS).read_text())
    return out


def _by_token(a: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """token -> (data, indices) of its column."""
    p = a["indptr"]
    return {
        t: (a["data"][p[j] : p[j + 1]], a["indices"][p[j] : p[j + 1]])
        for t, j in a["vocab"].items()
        if t
    }


@pytest.mark.parametrize(
    "method,k1,b", [("lucene", 1.5, 0.75), ("robertson", 1.2, 0.3), ("atire", 0.9, 1.0)]
)
def test_streamed_index_equals_bm25s(tmp_path, method, k1, b):
    """Chunks of 23 docs and buckets of 40 postings (frequent terms alone in a bucket): every
    column's scores (bitwise) and doc rows equal bm25s's, so do dtypes, shapes and params."""
    texts = _texts()
    want = _arrays(_bm25s_dir(texts, tmp_path / "ref", method, k1, b))
    n = bm25_build.write_bm25(
        texts, tmp_path / "new", k1=k1, b=b, method=method, chunk_docs=23, bucket_nnz=40
    )
    got = _arrays(tmp_path / "new")
    assert n == len(texts) == got["params"]["num_docs"]
    assert got["params"] == want["params"]
    assert set(got["vocab"]) == set(want["vocab"]) and got["vocab"][""] == len(got["vocab"]) - 1
    for k in ("data", "indices", "indptr"):
        assert (got[k].dtype, got[k].shape) == (want[k].dtype, want[k].shape), k
    cols_want, cols_got = _by_token(want), _by_token(got)
    for t, (data, rows) in cols_want.items():
        np.testing.assert_array_equal(cols_got[t][1], rows, err_msg=t)
        assert cols_got[t][0].tobytes() == data.tobytes(), t  # bit-identical float32
    first_seen = dict.fromkeys(t for doc in bm25_build.tokenize(texts, "en") for t in doc)
    assert got["vocab"] == {t: i for i, t in enumerate([*first_seen, ""])}  # first occurrence


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l"])
def test_streamed_search_equals_in_memory_build(tmp_path, method):
    """Scores and rows of every query, bitwise, streamed vs `BM25Index.build` (bm25l falls back
    to bm25s in memory and must agree too)."""
    texts = _texts()
    ref = BM25Index.build(texts, method=method)
    new = BM25Index.build_streamed(
        corpus_source.from_texts(texts), method=method, chunk_docs=17, bucket_nnz=64
    )
    assert isinstance(new.retriever.scores["data"], np.memmap)
    assert new.manifest.count == len(texts) and new.manifest.params == ref.manifest.params
    s_ref, r_ref = ref.search(QUERIES, 20)
    s_new, r_new = new.search(QUERIES, 20)
    np.testing.assert_array_equal(r_new, r_ref)
    assert s_new.tobytes() == s_ref.tobytes()
    assert (r_ref[3] == -1).all() and (r_ref[0] >= 0).any()


def test_chunk_and_bucket_sizes_do_not_change_the_files(tmp_path):
    """One doc per chunk, one posting per bucket, or everything at once: the same bytes."""
    texts = _texts(120, seed=1)
    files = ("data", "indices", "indptr")
    first = None
    for chunk, bucket in ((1, 1), (7, 13), (50, 3), (10**6, 10**9)):
        d = tmp_path / f"c{chunk}-{bucket}"
        bm25_build.write_bm25(texts, d, chunk_docs=chunk, bucket_nnz=bucket)
        got = {f: (d / getattr(bm25_build, f.upper())).read_bytes() for f in files}
        got["vocab"] = (d / bm25_build.VOCAB).read_bytes()
        assert not list(d.glob(".*")) and not list(d.glob("*.bin"))  # no temp files left
        first = first or got
        assert got == first, (chunk, bucket)


class _RecordingSource(corpus_source.ListCorpus):
    """A corpus that records every range read from it."""

    def __init__(self, texts):
        super().__init__([f"d{i}" for i in range(len(texts))], [Doc("", t) for t in texts])
        self.reads: list[tuple[int, int]] = []

    def read(self, start, stop):
        self.reads.append((start, stop))
        return super().read(start, stop)


def test_builder_reads_bounded_ranges_and_sorts_bounded_buckets(tmp_path, monkeypatch):
    """The corpus is read once, in ranges of at most chunk_docs rows; the postings come back
    from disk in blocks of at most bucket_nnz records (or one term's column)."""
    texts = _texts(400, seed=2)
    src = _RecordingSource(texts)
    loads, real_fromfile = [], np.fromfile

    def fromfile(*args, **kw):
        arr = real_fromfile(*args, **kw)
        loads.append(len(arr))
        return arr

    monkeypatch.setattr(np, "fromfile", fromfile)
    bm25_build.write_bm25(src, tmp_path / "ix", chunk_docs=16, bucket_nnz=100)
    monkeypatch.undo()
    assert max(hi - lo for lo, hi in src.reads) <= 16
    assert sorted(src.reads) == [(lo, min(lo + 16, 400)) for lo in range(0, 400, 16)]
    df = np.diff(np.load(tmp_path / "ix" / bm25_build.INDPTR))
    assert df.sum() > 10 * 100 and len(loads) > 10
    assert max(loads) <= max(100, int(df.max()))


def test_corpus_without_terms_raises(tmp_path):
    with pytest.raises(InputError, match="empty corpus"):
        bm25_build.write_bm25([], tmp_path / "a")
    with pytest.raises(InputError, match="no document has an indexable term"):
        bm25_build.write_bm25(["the of", "", "a"], tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cached_bm25_from_a_source(tmp_path):
    """Keyed on the source's fingerprint: the second call reuses the entry (memory-mapped), a
    changed corpus misses, and both equal the in-memory index's search."""
    texts = _texts(200, seed=3)
    src = corpus_source.from_texts(texts)
    ids = src.ids

    def build(source, **kw):
        m = IndexManifest(kind="bm25", count=len(source), corpus_path="x")
        return corpus_cache.cached_bm25(None, ids, m, cache_dir=tmp_path, source=source, **kw)

    ix1, hit1 = build(src)
    ix2, hit2 = build(corpus_source.from_texts(texts))
    assert (hit1, hit2) == (False, True) and ix2.manifest.corpus_path == "x"
    assert isinstance(ix2.retriever.scores["data"], np.memmap)
    (entry,) = tmp_path.glob("bm25-*")
    key = json.loads((entry / corpus_cache.KEY_FILE).read_text())
    assert key["corpus_fingerprint"] == src.fingerprint()
    s_ref, r_ref = BM25Index.build(texts).search(QUERIES, 10)
    for ix in (ix1, ix2):
        s, r = ix.search(QUERIES, 10)
        np.testing.assert_array_equal(r, r_ref)
        assert s.tobytes() == s_ref.tobytes()
    assert not build(corpus_source.from_texts([*texts[:-1], "new text"]))[1]
    assert not build(src, k1=1.2)[1]


def test_evaluate_bm25_streams_and_hits_the_cache(tmp_path, monkeypatch):
    """`--index bm25` (and hybrid) no longer read every text; the second run reuses the cached
    index and reproduces the metrics exactly."""
    (tmp_path / "beir").mkdir()
    beir = write_beir(tmp_path / "beir")

    def no_in_memory_build(*a, **k):
        raise AssertionError("the in-memory BM25 build was used")

    monkeypatch.setattr(BM25Index, "build", no_in_memory_build)
    cfg = evaluate.default_config()
    with cfg.unlocked():
        cfg.update(data=str(beir), split="dev", index="bm25", k=5, progress=False)
        cfg.update(cache_dir=str(tmp_path / "cache"))
    metrics, infos = [], []
    for run in ("a", "b"):
        cfg.output = str(tmp_path / run)
        metrics.append(evaluate.run_evaluation(cfg))
        infos.append(json.loads((tmp_path / run / "info.json").read_text()))
    assert [i["bm25_cache_reused"] for i in infos] == [False, True]
    (entry,) = (tmp_path / "cache").glob("bm25-*")  # keyed on the streamed source, not texts
    key = json.loads((entry / corpus_cache.KEY_FILE).read_text())
    assert key["corpus_fingerprint"] == corpus_source.open_corpus(beir).fingerprint()
    assert metrics[0] == metrics[1] and metrics[0]["nDCG@10"] > 0.5
    assert (tmp_path / "a" / "run.trec").read_text() == (tmp_path / "b" / "run.trec").read_text()
    with cfg.unlocked():
        cfg.index = "hybrid"
