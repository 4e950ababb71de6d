"""Embedding shards (`inference.shards`): streamed encoding in bounded shards equals encoding each
shard alone, bit for bit; a killed encode resumes at its first missing shard and finishes
identical; hosts own contiguous shard runs; the CLI writes shards + manifest + ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_data import save_tiny_bert

from dualenc.data import corpus_source
from dualenc.data.beir import Doc
from dualenc.inference import corpus_cache, encode, shards
from dualenc.models import loading

REPO = Path(__file__).resolve().parents[1]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_path):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny"), minilm_path, seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return loading.load_encoder(tiny_dir, pooling="mean", normalize=True)


def _corpus(n: int = 30) -> corpus_source.ListCorpus:
    rng = np.random.default_rng(0)
    docs = [
        Doc(f"t{i}" if i % 3 else "", " ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))))
        for i in range(n)
    ]
    return corpus_source.ListCorpus([f"d{i}" for i in range(n)], docs)


def test_host_shards_are_contiguous_and_cover_all():
    for n_shards in (0, 1, 5, 10):
        for hosts in (1, 2, 3):
            got = [list(shards.host_shards(n_shards, h, hosts)) for h in range(hosts)]
            assert sum(got, []) == list(range(n_shards))
            assert max(map(len, got)) - min(map(len, got)) <= 1
    assert shards.shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_shards_equal_each_shard_encoded_alone(tiny, tmp_path):
    src = _corpus()
    key = corpus_cache.encoder_key(tiny, 32)
    out, reused = shards.encode_shards(
        tiny, src, tmp_path, key, shard_rows=7, batch_size=4, max_length=32, progress=False
    )
    assert not reused and len(out.ranges) == 5 and out.dim == 32
    for j, (lo, hi) in enumerate(out.ranges):
        texts = [corpus_source.doc_text(d) for d in src.read(lo, hi)[1]]
        ref = encode.encode_texts(tiny, texts, batch_size=4, max_length=32, progress=False)
        np.testing.assert_array_equal(out.load(j), ref)  # bit for bit
        assert isinstance(out.load(j), np.memmap)
    whole = encode.encode_texts(
        tiny,
        [corpus_source.doc_text(d) for d in src.docs],
        batch_size=4,
        max_length=32,
        progress=False,
    )
    np.testing.assert_allclose(out.to_array(), whole, atol=2e-5, rtol=0)
    again, reused = shards.encode_shards(
        tiny, src, tmp_path, key, shard_rows=7, batch_size=4, max_length=32, progress=False
    )
    assert reused
    m = shards.read_manifest(tmp_path)
    assert m["count"] == 30 and m["dim"] == 32 and len(m["shards"]) == 5
    assert m["corpus_fingerprint"] == src.fingerprint()


def test_killed_encode_resumes_and_finishes_identical(tiny, tmp_path, monkeypatch):
    src = _corpus()
    key = corpus_cache.encoder_key(tiny, 32)
    kw = dict(shard_rows=6, batch_size=4, max_length=32, progress=False)
    fresh, _ = shards.encode_shards(tiny, src, tmp_path / "fresh", key, **kw)
    real_write, calls = shards.write_shard, []

    def dies_after_two(path, emb):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # as a SIGINT / preemption mid-run
        calls.append(path)
        real_write(path, emb)

    monkeypatch.setattr(shards, "write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        shards.encode_shards(tiny, src, tmp_path / "run", key, **kw)
    monkeypatch.undo()
    done = sorted((tmp_path / "run").glob("emb-*.npy"))
    assert len(done) == 2 and not list((tmp_path / "run").glob(".*tmp"))
    mtimes = [p.stat().st_mtime_ns for p in done]
    encoded = []
    real_encode = encode.encode_texts
    monkeypatch.setattr(
        encode, "encode_texts", lambda e, t, **k: encoded.append(len(t)) or real_encode(e, t, **k)
    )
    out, reused = shards.encode_shards(tiny, src, tmp_path / "run", key, **kw)
    assert not reused and encoded == [6, 6, 6]  # only shards 2, 3, 4
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    np.testing.assert_array_equal(out.to_array(), fresh.to_array())
    # a damaged shard (truncated by a crash of the disk, not of us) is re-encoded
    data = out.path(1).read_bytes()
    out.path(1).write_bytes(data[: len(data) // 2])
    out2, _ = shards.encode_shards(tiny, src, tmp_path / "run", key, **kw)
    assert encoded == [6, 6, 6, 6]
    np.testing.assert_array_equal(out2.to_array(), fresh.to_array())


def test_cli_output_dir_and_npy(tiny_dir, tmp_path):
    rows = [{"_id": f"x{i}", "title": "T", "text": f"{WORDS[i % 12]} {i}"} for i in range(11)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir, npy = tmp_path / "shards", tmp_path / "emb.npy"
    args = ["--model", str(tiny_dir), "--input", str(inp), "--output", str(npy)]
    args += ["--output_dir", str(out_dir), "--shard_size", "4", "--max_length", "32"]
    r = subprocess.run(
        [sys.executable, "-m", "dualenc.encode", *args, "--progress=false"],
        cwd=REPO,
        env={**__import__("os").environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sh = shards.open_shards(out_dir)
    assert shards.read_shard_ids(out_dir) == [f"x{i}" for i in range(11)]
    assert len(list(out_dir.glob("emb-*.npy"))) == 3 and sh.count == 11
    np.testing.assert_array_equal(np.load(npy), sh.to_array())


def _shards_of(p: np.ndarray, d: Path, rows: int) -> shards.EmbeddingShards:
    sh = shards.EmbeddingShards(d, {"test": 1}, len(p), rows, p.shape[1])
    for j, (lo, hi) in enumerate(sh.ranges):
        shards.write_shard(sh.path(j), p[lo:hi])
    return sh


@pytest.mark.parametrize("similarity,truncate_dim", [("dot", 0), ("cos", 0), ("dot", 4)])
def test_sharded_exact_search_equals_exact_index(tmp_path, similarity, truncate_dim):
    """Shard by shard with a running top-k merge = the whole matrix at once, ties included
    (equal rows across shard boundaries resolve to the lower row)."""
    from dualenc.data.mining import DenseScorer
    from dualenc.index.base import IndexManifest
    from dualenc.index.exact import ExactIndex
    from dualenc.index.sharded import ShardedExactIndex

    rng = np.random.default_rng(0)
    p = rng.normal(size=(50, 8)).astype(np.float32)
    p[40], p[45], p[13] = p[3], p[10], p[3]  # ties across shards of 7 rows
    q = np.concatenate([rng.normal(size=(5, 8)), p[[3, 10]]]).astype(np.float32)
    sh = _shards_of(p, tmp_path, 7)
    kw = dict(similarity=similarity, truncate_dim=truncate_dim)
    ref = ExactIndex(p, IndexManifest(kind="exact", count=50), **kw)
    got = ShardedExactIndex(sh, IndexManifest(kind="exact", count=50), **kw)
    for k in (1, 5, 20, 50, 80):
        s_ref, i_ref = ref.search(q, k)
        s, i = got.search(q, k)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_allclose(s, s_ref, rtol=1e-6)  # XLA's dot of a 7-row block rounds
        # the last bit its own way; across hosts the blocks (shards) are the same
    if similarity == "cos":  # three equal vectors, in three shards: the lower rows first
        assert got.search(q[5:6], 3)[1][0].tolist() == [3, 13, 40]
    a, b = DenseScorer(q, p, similarity), DenseScorer(q, sh, similarity)
    np.testing.assert_array_equal(a.search(10), b.search(10))
    rows = [[0, 49, 8], [7, 6]]
    for x, y in zip(a.score([0, 1], rows), b.score([0, 1], rows), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
