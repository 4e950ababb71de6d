"""Compressed indexes: int8 calibration and round trip, binary packing and Hamming ranking
against numpy and sentence-transformers, rescoring (recall, equality with exact search),
Matryoshka truncation at search time, index bytes, and saved indexes."""

import jax
import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from dualenc.index import load_index, save_index_dir
from dualenc.index import quantize as qz
from dualenc.index.base import IndexManifest, l2_normalize
from dualenc.index.exact import ExactIndex
from dualenc.index.quantized import QuantizedIndex
from dualenc.io import InputError


def _clustered(sizes, d, n_clusters, rng, noise=0.3):
    """Unit vectors around shared cluster centres, one (n, d) array per size (corpus, queries)."""
    c = rng.standard_normal((n_clusters, d))
    out = []
    for n in sizes:
        x = c[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, d))
        out.append(l2_normalize(x).astype(np.float32))
    return out


def _topk(s, k):
    """Stable top-k of a (Q, N) score matrix: lower row first on ties."""
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, 1), rows


def _recall(rows, ref):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, ref, strict=True)])


def test_int8_calibration_ranges_and_round_trip():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 24)) * rng.uniform(0.1, 3, 24)).astype(np.float32)
    cal = x[:200]
    r = qz.calibrate_int8(cal)
    np.testing.assert_array_equal(r.starts, cal.min(0))
    np.testing.assert_allclose(r.steps, (cal.max(0) - cal.min(0)) / 255, rtol=1e-6)
    codes = qz.quantize_int8(cal, r)
    assert codes.dtype == np.int8
    assert (codes.min(0) == -128).all() and (codes.max(0) == 127).all()  # the range is used
    err = np.abs(qz.dequantize_int8(codes, r) - cal)
    assert (err <= r.steps / 2 + 1e-6).all()  # within half a bucket
    # sentence-transformers truncates where we round: at most one code apart inside the range.
    st = quantize_embeddings(cal, precision="int8", calibration_embeddings=cal)
    assert np.abs(st.astype(int) - codes.astype(int)).max() <= 1
    # Rows outside the calibration range clip to the end codes instead of wrapping around.
    out = qz.quantize_int8(np.stack([cal.max(0) + 5, cal.min(0) - 5]), r)
    assert (out[0] == 127).all() and (out[1] == -128).all()
    assert qz.calibration_sample(x, 50).shape == (50, 24)
    np.testing.assert_array_equal(qz.calibration_sample(x, 50), qz.calibration_sample(x, 50))


def test_binary_packing_matches_numpy_and_sentence_transformers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 37)).astype(np.float32)  # 37: the last byte is padded
    bits = qz.pack_bits(x)
    assert bits.dtype == np.uint8 and bits.shape == (20, 5)
    np.testing.assert_array_equal(bits, quantize_embeddings(x, precision="ubinary"))
    np.testing.assert_array_equal(qz.unpack_signs(bits, 37), np.where(x > 0, 1.0, -1.0))


@pytest.mark.parametrize("ndev,chunk", [(1, 64), (8, 5)])
def test_binary_first_stage_ranks_by_hamming_like_numpy(ndev, chunk):
    rng = np.random.default_rng(ndev)
    p = rng.standard_normal((301, 37)).astype(np.float32)
    p[250] = p[11]  # identical codes: a tie the lower row must win
    q = rng.standard_normal((23, 37)).astype(np.float32)
    q[0] = p[11]
    idx = QuantizedIndex.build(
        p, precision="binary", rescore_multiplier=0, chunk_size=chunk, query_batch=8,
        devices=jax.devices()[:ndev],
    )  # fmt: skip
    s, rows = idx.search(q, 12)
    ham = np.bitwise_count(qz.pack_bits(q)[:, None, :] ^ qz.pack_bits(p)[None]).sum(-1)
    ref_rows = np.argsort(ham, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(s, 37 - 2 * np.take_along_axis(ham, ref_rows, 1))
    assert list(rows[0, :2]) == [11, 250] and s[0, 0] == 37


def test_int8_first_stage_matches_numpy_code_dot_products():
    rng = np.random.default_rng(2)
    p = rng.standard_normal((257, 16)).astype(np.float32)
    q = rng.standard_normal((9, 16)).astype(np.float32)
    idx = QuantizedIndex.build(p, precision="int8", rescore_multiplier=0, chunk_size=32)
    s, rows = idx.search(q, 7)
    r = qz.calibrate_int8(p)
    ref = qz.quantize_int8(q, r).astype(np.int64) @ qz.quantize_int8(p, r).astype(np.int64).T
    ref_s, ref_rows = _topk(ref, 7)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(s, ref_s)


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_rescoring_improves_recall_on_clustered_data(precision):
    """Recall@10 against float exact search: rescoring the top 4k beats the first stage, and a
    finer rescoring copy (int8, float) beats the index's own codes. Measured here: int8 0.59 ->
    0.95 (0.97 with float); binary 0.25 -> 0.30 (signs) -> 0.68 (int8 or float)."""
    rng = np.random.default_rng(3)
    p, q = _clustered((3000, 200), 64, 30, rng, noise=0.5)
    _, ref = _topk(q @ p.T, 10)

    def recall(mult, rescore_with=""):
        idx = QuantizedIndex.build(
            p, precision=precision, rescore_multiplier=mult, rescore_with=rescore_with
        )
        return _recall(idx.search(q, 10)[1], ref)

    first, rescored, finer = recall(0), recall(4), recall(4, "int8")
    assert recall(1) == first  # the same k candidates, only reordered
    assert rescored > first + 0.03 and finer >= rescored
    assert recall(4, "float") >= finer > first + 0.3
    assert recall(16, "float") > recall(4, "float")  # a deeper candidate pool


@pytest.mark.parametrize(
    "precision,rescore_with", [("int8", ""), ("int8", "float"), ("binary", "int8")]
)
def test_rescoring_that_covers_the_corpus_is_exact_search(precision, rescore_with):
    """rescore_multiplier * k >= N: every row is rescored, so the result is exact search over the
    rescoring vectors (float32, or the dequantised int8 codes)."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal((400, 24)).astype(np.float32)
    q = rng.standard_normal((17, 24)).astype(np.float32)
    idx = QuantizedIndex.build(
        p, precision=precision, rescore_multiplier=40, rescore_with=rescore_with
    )
    s, rows = idx.search(q, 10)
    vecs = (
        p
        if rescore_with == "float"
        else qz.dequantize_int8(qz.quantize_int8(p, idx.ranges), idx.ranges)
    )
    ref_s, ref_rows = ExactIndex(vecs).search(q, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)


def test_truncate_dim_keeps_a_renormalised_prefix():
    rng = np.random.default_rng(5)
    p, q = _clustered((500, 20), 48, 10, rng)
    m = IndexManifest(kind="exact", count=0, normalize=True)
    s, rows = ExactIndex(p, m, truncate_dim=16).search(q, 10)
    ref_s, ref_rows = _topk(l2_normalize(q[:, :16]) @ l2_normalize(p[:, :16]).T, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(s, ref_s, atol=1e-5)
    qm = IndexManifest(kind="quantized", count=0, normalize=True)
    idx = QuantizedIndex.build(p, qm, rescore_multiplier=50, rescore_with="float", truncate_dim=16)
    assert idx.memory()["float32_bytes"] == 500 * 16 * 4
    s2, rows2 = idx.search(q, 10)
    np.testing.assert_array_equal(rows2, ref_rows)
    np.testing.assert_allclose(s2, ref_s, atol=1e-5)
    with pytest.raises(InputError, match="field 'truncate_dim'"):
        ExactIndex(p, truncate_dim=49)


def test_index_bytes():
    p = np.random.default_rng(6).standard_normal((1000, 64)).astype(np.float32)
    assert ExactIndex(p).memory() == {"index_bytes": 256_000, "float32_bytes": 256_000}
    i8 = QuantizedIndex.build(p, precision="int8").memory()
    assert i8 == {"index_bytes": 64_000 + 2 * 64 * 4, "rescore_bytes": 0, "float32_bytes": 256_000}
    b = QuantizedIndex.build(p, precision="binary", rescore_with="int8").memory()
    assert b == {"index_bytes": 8_000, "rescore_bytes": 64_000 + 512, "float32_bytes": 256_000}


@pytest.mark.parametrize("precision,rescore_with", [("binary", "int8"), ("int8", "float")])
def test_saved_index_round_trips(tmp_path, precision, rescore_with):
    rng = np.random.default_rng(7)
    p, q = _clustered((200, 6), 20, 5, rng)
    m = IndexManifest(kind="quantized", count=0, weights_hash="abc", normalize=True)
    idx = QuantizedIndex.build(
        p, m, precision=precision, rescore_with=rescore_with, truncate_dim=12
    )
    ids = [f"d{i}" for i in range(200)]
    save_index_dir(idx, ids, tmp_path / "ix")
    codes = np.load(tmp_path / "ix" / "codes.npy")
    assert codes.shape == ((200, 2) if precision == "binary" else (200, 12))  # compressed form
    back = load_index(tmp_path / "ix", weights_hash="abc")
    assert isinstance(back, QuantizedIndex) and isinstance(back.rescore_store, np.memmap)
    for a, b in zip(idx.search(q, 5), back.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    ex = ExactIndex(p, IndexManifest(kind="exact", count=0, normalize=True), truncate_dim=12)
    save_index_dir(ex, ids, tmp_path / "ex")
    assert np.load(tmp_path / "ex" / "embeddings.npy").shape == (200, 12)
    for a, b in zip(ex.search(q, 5), load_index(tmp_path / "ex").search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"precision": "int4"}, "quantize"),
        ({"rescore_multiplier": -1}, "rescore_multiplier"),
        ({"rescore_with": "fp16"}, "rescore_with"),
        ({"calibration_size": 0}, "calibration_size"),
    ],
)
def test_bad_options_name_the_field(kw, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        QuantizedIndex.build(np.eye(4, dtype=np.float32), **kw)
