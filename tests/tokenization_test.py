"""Tokenisation and length bucketing."""

import numpy as np
import pytest

from dualenc import tokenization as T


def test_bucket_batches_cover_every_index_once_with_bounded_shapes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 300, size=257)
    batches = T.bucket_batches(lengths, 16, max_length=256)
    idx = np.concatenate([b for b, _ in batches])
    assert sorted(idx.tolist()) == list(range(257))
    for b, padded in batches:
        assert padded >= min(lengths[b].max(), 256)
        assert padded in T.DEFAULT_BUCKETS or padded == 256
    assert len({p for _, p in batches}) <= len(T.DEFAULT_BUCKETS)


def test_bucket_length():
    assert T.bucket_length(1) == 16
    assert T.bucket_length(17) == 32
    assert T.bucket_length(200, max_length=128) == 128
    assert T.bucket_length(600) == 600


def test_pad_batch():
    ids, mask = T.pad_batch([[5, 6, 7], [8]], 4, pad=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    assert ids.dtype == np.int32
    with pytest.raises(ValueError, match="5 tokens"):
        T.pad_batch([[1, 2, 3, 4, 5]], 4)


def test_minilm_tokenizer_quirks(minilm_path):
    tok = T.load_tokenizer(minilm_path)
    assert T.tokenize(tok, ["hello world"], 256) == [[101, 7592, 2088, 102]]
    long = " ".join(["word"] * 400)
    (ids,) = T.tokenize(tok, [long], 256)
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102
    # Truncation is per call: the next call is not truncated.
    (ids,) = T.tokenize(tok, [long], 512)
    assert len(ids) == 402
    a, types = T.tokenize_pairs(tok, ["hello"], ["world"], 32)
    assert a == [[101, 7592, 102, 2088, 102]] and types == [[0, 0, 0, 1, 1]]
    assert T.pad_id(tok) == 0
