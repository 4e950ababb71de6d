"""Indexes: exact vs numpy (1 and 8 devices, chunking, ties), ScaNN, BM25, fusion, manifests,
TREC run files and bad input."""

import jax
import numpy as np
import pytest

from dualenc.index import Index, load_doc_ids, load_index, save_index_dir
from dualenc.index.base import IndexManifest, IndexMismatchError, check_doc_ids, rows_to_run
from dualenc.index.bm25 import BM25Index, bm25_run
from dualenc.index.exact import ExactIndex
from dualenc.index.fusion import fuse, fuse_head, tune_weight
from dualenc.index.scann_index import ScannIndex, default_params
from dualenc.inference.corpus_cache import cached_embeddings, corpus_fingerprint
from dualenc.io import InputError
from dualenc.runs import read_trec, write_trec


def _numpy_topk(q, p, k):
    s = q @ p.T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]  # stable: lower row first on ties
    return np.take_along_axis(s, rows, 1), rows


@pytest.mark.parametrize("ndev,chunk,k", [(1, 64, 10), (8, 16, 10), (8, 7, 30), (8, 4096, 5)])
def test_exact_matches_numpy(ndev, chunk, k):
    assert len(jax.devices()) == 8  # conftest: 8 fake CPU devices
    rng = np.random.default_rng(ndev + chunk)
    # Halves: every dot product is exact in float32, so ties are real ties on any backend.
    p = (np.round(rng.standard_normal((533, 24)) * 2) / 2).astype(np.float32)
    p[400] = p[17]  # exact duplicate rows: same score, lower row must come first
    q = (np.round(rng.standard_normal((41, 24)) * 2) / 2).astype(np.float32)
    q[0] = p[17]
    idx = ExactIndex(p, chunk_size=chunk, query_batch=16, devices=jax.devices()[:ndev])
    s, rows = idx.search(q, k)
    ref_s, ref_rows = _numpy_topk(q, p, k)
    assert rows.dtype == np.int64 and s.dtype == np.float32 and rows.shape == (41, k)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)
    assert list(rows[0, :2]) == [17, 400]


def test_exact_cosine_and_k_larger_than_corpus():
    rng = np.random.default_rng(1)
    p = rng.standard_normal((13, 8)).astype(np.float32) * rng.uniform(0.1, 10, (13, 1))
    q = rng.standard_normal((3, 8)).astype(np.float32)
    s, rows = ExactIndex(p, similarity="cos").search(q, 50)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref_s, ref_rows = _numpy_topk(qn, pn, 13)
    assert rows.shape == (3, 13)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(s, ref_s, atol=1e-5)


def _clustered(n, d, n_clusters, rng, noise=0.15):
    c = rng.standard_normal((n_clusters, d))
    x = c[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_scann_tree_ah_recall_and_round_trip(tmp_path):
    """20k clustered unit vectors with ScaNN's defaults: the searcher is a partition tree with
    anisotropic hashing and exact reordering (not brute force), and recall@10 against the exact
    index is >= 0.9; the saved index reloads into the same searcher."""
    rng = np.random.default_rng(0)
    x = _clustered(20_500, 64, 400, rng)
    p, q = x[:20_000], x[20_000:]
    idx = ScannIndex.build(p, IndexManifest(kind="scann", count=0, weights_hash="abc"), k=10)
    assert not idx.manifest.params["brute_force"] and idx.manifest.params["num_leaves"] == 141
    config = idx.searcher.config()  # the text proto ScaNN actually built
    assert "brute_force" not in config
    for part in ("partitioning {", "num_children: 141", "asymmetric_hash {", "exact_reordering {"):
        assert part in config, part
    s, rows = idx.search(q, 10)
    _, ref = ExactIndex(p).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ref, strict=True)])
    assert recall >= 0.9, recall
    save_index_dir(idx, [f"d{i}" for i in range(len(p))], tmp_path / "ix")
    assets = (tmp_path / "ix" / "scann" / "scann_assets.pbtxt").read_text()
    assert "PARTITIONER" in assets and "AH_CENTERS" in assets
    again = load_index(tmp_path / "ix", weights_hash="abc")
    assert "asymmetric_hash {" in again.searcher.config()
    s2, rows2 = again.search(q, 10)
    np.testing.assert_array_equal(rows2, rows)
    np.testing.assert_array_equal(s2, s)
    assert load_doc_ids(tmp_path / "ix")[:2] == ["d0", "d1"]
    with pytest.raises(IndexMismatchError, match="weights hash"):
        load_index(tmp_path / "ix", weights_hash="other")


def test_scann_overrides_win():
    p = default_params(20_000, brute_force_below=1000, num_leaves_to_search=20, reorder=None)
    assert not p["brute_force"] and p["num_leaves"] == 141
    assert p["num_leaves_to_search"] == 20 and p["reorder"] == 100  # None keeps the default 100
    assert default_params(19_999)["brute_force"] and not default_params(20_000)["brute_force"]


def test_scann_brute_force_small_corpus_is_exact():
    rng = np.random.default_rng(3)
    p, q = _clustered(500, 16, 20, rng), _clustered(7, 16, 20, rng)
    idx = ScannIndex.build(p)
    assert idx.manifest.params["brute_force"]
    _, rows = idx.search(q, 5)
    np.testing.assert_array_equal(rows, _numpy_topk(q, p, 5)[1])


def test_exact_save_load_and_mismatch(tmp_path):
    p = np.eye(4, 6, dtype=np.float32)
    m = IndexManifest(kind="exact", count=4, model_source="m1", weights_hash="h1")
    save_index_dir(ExactIndex(p, m), ["a", "b", "c", "d"], tmp_path / "ix")
    idx = load_index(tmp_path / "ix", weights_hash="h1")
    assert isinstance(idx, Index)
    s, rows = idx.search(np.array([[0, 0, 1, 0, 0, 0]], np.float32), 2)
    assert rows[0, 0] == 2 and s[0, 0] == 1.0
    with pytest.raises(IndexMismatchError, match="'m1'"):
        load_index(tmp_path / "ix", weights_hash="h2")
    with pytest.raises(IndexMismatchError, match="6-dim"):
        idx.search(np.zeros((1, 5), np.float32), 1)


def test_bm25_tiny_corpus(tmp_path):
    texts = [
        "the cat sat on the mat",
        "dogs chase cats",
        "stock markets fell sharply",
        "a cat and a dog",
    ]
    ids = ["c1", "c2", "s1", "c3"]
    idx = BM25Index.build(texts)
    run = bm25_run(idx, ["q1", "q2", "q3"], ["cat mat", "markets", "the of and"], ids, 10)
    assert list(run["q1"])[0] == "c1"  # both terms
    assert set(run["q1"]) == {"c1", "c3"}  # 'cats' is a different token without a stemmer
    assert list(run["q2"]) == ["s1"]
    assert run["q3"] == {}  # stop words only: nothing retrieved
    save_index_dir(idx, ids, tmp_path / "bm")
    again = load_index(tmp_path / "bm")
    assert bm25_run(again, ["q1"], ["cat mat"], ids, 10)["q1"] == run["q1"]


def test_fusion_hand_values():
    a = {"q": {"x": 4.0, "y": 2.0, "z": 0.0}}
    b = {"q": {"y": 10.0, "w": 5.0}}
    # minmax: a -> x 1, y .5, z 0; b -> y 1, w 0; missing -> 0.
    f = fuse(a, b, "minmax", weight=2.0)["q"]
    assert f == pytest.approx({"y": 0.5 + 2.0, "x": 1.0, "z": 0.0, "w": 0.0})
    assert list(f)[0] == "y"
    # zscore: a mean 2, sd sqrt(8/3) -> x 1.2247, y 0, z -1.2247; b -> y 1, w -1;
    # missing -> the run's min (a: -1.2247, b: -1).
    sd = np.sqrt(8 / 3)
    f = fuse(a, b, "zscore", weight=1.0)["q"]
    assert f == pytest.approx({"x": 2 / sd - 1, "y": 0 + 1, "z": -2 / sd - 1, "w": -2 / sd - 1})
    # rrf, k=60: ranks a: x1 y2 z3; b: y1 w2.
    f = fuse(a, b, "rrf", weight=1.0, k_rrf=60)["q"]
    assert f == pytest.approx({"y": 1 / 62 + 1 / 61, "x": 1 / 61, "w": 1 / 62, "z": 1 / 63})
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(a, b, "max")


def test_fuse_head_fuses_the_top_and_keeps_the_tail_below():
    """first + w * second over first's top 2 only; first's tail stays below, in its order."""
    first = {"q": {"a": 9.0, "b": 8.0, "c": 7.0, "d": 6.0}}
    ce = {"q": {"a": 0.0, "b": 4.0}}  # a CE scored only the head
    f = fuse_head(first, ce, 2, "minmax", 3.0)["q"]
    # minmax over the head: first a 1, b 0; ce a 0, b 1 -> a 1, b 3.
    assert list(f) == ["b", "a", "c", "d"]
    assert f["b"] == pytest.approx(3.0) and f["a"] == pytest.approx(1.0)
    assert f["c"] == pytest.approx(0.0) and f["d"] == pytest.approx(-1.0)
    assert list(fuse_head(first, ce, 2, "minmax", 0.5)["q"]) == ["a", "b", "c", "d"]


def test_tune_weight_picks_the_better_system():
    qrels = {"q1": {"good": 1}, "q2": {"good2": 1}}
    a = {"q1": {"bad": 2.0, "good": 1.0}, "q2": {"bad": 2.0, "good2": 1.0}}
    b = {"q1": {"good": 3.0, "bad": 0.0}, "q2": {"good2": 3.0, "bad": 0.0}}
    w, scores = tune_weight(a, b, qrels, "RR@10", grid=(0.0, 0.5, 2.0))
    assert scores[0.0] == 0.5 and scores[2.0] == 1.0 and w == 2.0
    # weight 0.5: good = 0 + .5, bad = 1 + 0: still wrong; ties go to the earliest weight
    assert scores[0.5] == 0.5


def test_trec_round_trip_and_errors(tmp_path):
    run = {"q1": {"d2": 0.5, "d1": 1.25}, "q2": {"d9": -3.0}}
    write_trec(tmp_path / "r.trec", run, tag="t1")
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 1.25 t1" and lines[1] == "q1 Q0 d2 2 0.5 t1"
    assert read_trec(tmp_path / "r.trec") == run
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 x t\n")
    with pytest.raises(InputError, match="bad.trec:2"):
        read_trec(tmp_path / "bad.trec")
    (tmp_path / "dup.trec").write_text("q1 Q0 d1 1 1.0 t\n\nq1 Q0 d1 2 0.5 t\n")
    with pytest.raises(InputError, match="dup.trec:3"):
        read_trec(tmp_path / "dup.trec")
    with pytest.raises(InputError, match="file not found"):
        read_trec(tmp_path / "missing.trec")


def test_bad_input():
    with pytest.raises(InputError, match="duplicate doc id 'a'"):
        check_doc_ids(["a", "b", "a"])
    with pytest.raises(InputError, match="empty corpus"):
        ExactIndex(np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="empty corpus"):
        BM25Index.build([])
    with pytest.raises(ValueError, match="NaN"):
        ExactIndex(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(InputError, match="manifest.json missing"):
        load_index("/nonexistent/index/dir")
    with pytest.raises(ValueError, match="doc ids"):
        save_index_dir(ExactIndex(np.eye(2, dtype=np.float32)), ["a"], "/tmp/unused_ix")
    assert rows_to_run(["q"], np.array([[1.0, 0.0]]), np.array([[1, -1]]), ["a", "b"]) == {
        "q": {"b": 1.0}
    }


class _FakeEncoder:
    source, pooling, normalize = "fake", "mean", True

    def __init__(self, h):
        self.h = h

    def weights_hash(self):
        return self.h


def test_corpus_cache_reuses_only_on_matching_manifest(tmp_path):
    calls = []

    def enc(texts):
        calls.append(len(texts))
        return np.ones((len(texts), 3), np.float32) * len(calls)

    kw = {"cache_dir": tmp_path, "max_length": 32, "encode_fn": enc}
    e1, hit1 = cached_embeddings(_FakeEncoder("h1"), ["a", "b"], ["x", "y"], **kw)
    e2, hit2 = cached_embeddings(_FakeEncoder("h1"), ["a", "b"], ["x", "y"], **kw)
    assert (hit1, hit2) == (False, True) and calls == [2]
    np.testing.assert_array_equal(e1, e2)
    for enc_hash, ids, texts, ml in [
        ("h2", ["a", "b"], ["x", "y"], 32),  # other weights
        ("h1", ["a", "b"], ["x", "z"], 32),  # other text
        ("h1", ["a", "b"], ["x", "y"], 64),
    ]:  # other max_length
        _, hit = cached_embeddings(_FakeEncoder(enc_hash), ids, texts, **{**kw, "max_length": ml})
        assert not hit
    assert len(calls) == 4
    # ids/texts are length-prefixed: moving a character between fields changes the fingerprint
    assert corpus_fingerprint(["ab"], ["c"]) != corpus_fingerprint(["a"], ["bc"])
