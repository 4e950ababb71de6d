"""The hashed dropout mask: exact rate, 1/(1-p) scaling, determinism per key, independence."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualenc.models import dropout

N = 1 << 20


def _sigma(p: float, n: int = N) -> float:
    return (p * (1 - p) / n) ** 0.5


def largest_uint32_iota(lowered: jax.stages.Lowered) -> int:
    """Elements of the largest uint32 iota in a lowered program: an index iota of 2^32 elements
    or more wraps silently on device (masks repeat), so none may reach that size."""
    shapes = re.findall(r"iota[^\n]*tensor<([0-9x]+)xui32>", lowered.as_text())
    assert shapes, "no uint32 iota: the dropout index is not where this test looks"
    return max(math.prod(int(d) for d in s.split("x")) for s in shapes)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.02])
def test_drop_rate_matches(rate):
    keep = np.asarray(dropout.keep_mask(jax.random.key(3), rate, (N,)))
    assert abs((1 - keep.mean()) - rate) < 5 * _sigma(rate)


def test_bits_uniform_in_every_nibble():
    bits = np.asarray(dropout.hash_bits(jax.random.key(0), (64, 128, 128)), dtype=np.uint64)
    for shift in (0, 12, 28):  # low, middle and top nibble: each of 16 values 1/16 of the time
        counts = np.bincount(((bits >> shift) & 15).astype(np.int64).ravel(), minlength=16)
        assert np.abs(counts / bits.size - 1 / 16).max() < 6 * _sigma(1 / 16, bits.size)


def test_same_key_same_mask_other_key_independent():
    a = np.asarray(dropout.keep_mask(jax.random.key(1), 0.5, (N,)))
    assert np.array_equal(a, np.asarray(dropout.keep_mask(jax.random.key(1), 0.5, (N,))))
    for other in (jax.random.key(2), jax.random.fold_in(jax.random.key(1), 1)):
        b = np.asarray(dropout.keep_mask(other, 0.5, (N,)))
        assert abs((a == b).mean() - 0.5) < 5 * _sigma(0.5)  # agreement of independent masks


def test_neighbouring_positions_uncorrelated():
    keep = np.asarray(dropout.keep_mask(jax.random.key(4), 0.5, (N,)))
    for lag in (1, 2, 128, 4096):
        assert abs((keep[:-lag] == keep[lag:]).mean() - 0.5) < 5 * _sigma(0.5)


def test_module_scales_kept_values_and_is_identity_when_deterministic():
    x = jnp.full((256, 512), 3.0)
    mod = dropout.Dropout(0.25)
    y = np.asarray(mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 3.0 / 0.75, rtol=1e-6)
    assert abs((1 - kept.mean()) - 0.25) < 5 * _sigma(0.25, y.size)
    assert abs(y.mean() - 3.0) < 0.05  # unbiased in expectation
    assert np.array_equal(np.asarray(mod.apply({}, x, deterministic=True)), np.asarray(x))
    assert not np.asarray(dropout.Dropout(1.0).apply({}, x, deterministic=False)).any()


def test_layers_draw_different_masks():
    """Two Dropout modules in one model fold different paths into the key (like nn.Dropout)."""
    import flax.linen as nn

    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return dropout.Dropout(0.5)(x, False), dropout.Dropout(0.5)(x, False)

    a, b = Two().apply({}, jnp.ones((N,)), rngs={"dropout": jax.random.key(0)})
    assert abs((np.asarray(a) == np.asarray(b)).mean() - 0.5) < 5 * _sigma(0.5)


def test_blocked_index_past_uint32():
    """Past `wrap` elements the leading dims number blocks of the hash: block 0 is the plain
    flat-index mask, other blocks differ, the rate holds; and a pod-sized mask (8,192 x 512 x
    1,024 > 2^32 elements) traces where it used to raise."""
    key = jax.random.key(5)
    wide = np.asarray(dropout.hash_bits(key, (64, 1024), wrap=2**12))
    np.testing.assert_array_equal(wide[0], np.asarray(dropout.hash_bits(key, (1024,))))
    assert (wide[1] != wide[0]).mean() > 0.99 and len(np.unique(wide)) > 0.99 * wide.size
    keep = np.asarray(dropout.keep_mask(key, 0.25, (64, 1024), wrap=2**12))
    assert abs(keep.mean() - 0.75) < 0.01
    big = jax.jit(lambda k: dropout.keep_mask(k, 0.1, (8192, 512, 1024))).lower(key)
    assert big.out_info.shape == (8192, 512, 1024) and big.out_info.dtype == jnp.bool_
    assert largest_uint32_iota(big) < 2**32


def test_pod_sized_passage_batch_traces_with_dropout(monkeypatch):
    """The passage tower with dropout on at global batch 8,192 x p_max_length 512 (attention
    scores past 2^32 elements with BERT-base's 12 heads): it traces, with the blocked dropout
    index, where the uint32 index used to raise at trace time; and no index can wrap (a flat
    index with the size check removed would trace too, and repeat masks on device)."""
    from dualenc.models import attention, dual_encoder
    from dualenc.models.bert import BertConfig

    wide, chunked = [], attention._chunked

    def spy(*args):  # records whether attention numbers blocks (its last argument, `wide`)
        wide.append(args[-1])
        return chunked(*args)

    monkeypatch.setattr(attention, "_chunked", spy)

    cfg = BertConfig(
        vocab_size=128, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512,
    )  # fmt: skip
    spec = dual_encoder.EncoderSpec(arch="bert", config=cfg, pooling="mean", normalize=True)
    params = jax.eval_shape(lambda k: dual_encoder.init_tower(spec, k), jax.random.key(0))
    ids = jax.ShapeDtypeStruct((8192, 512), jnp.int32)
    wide.clear()  # init's small batch

    def embed(p, i, m, k):
        return dual_encoder.embed(spec, p, i, m, deterministic=False, rngs={"dropout": k})

    lowered = jax.jit(embed).lower(params, ids, ids, jax.random.key(1))
    assert lowered.out_info.shape == (8192, 768)
    # No element index wraps: attention's dropout (8,192 x 12 x 512 x 512 = 2.6e10 scores)
    # numbers blocks (its flat index, row * 12 * 512 * 512 + i, would wrap in uint32); the
    # hidden states' dropout (8,192 x 512 x 768 = 3.2e9) stays under 2^32 with one iota.
    assert wide and all(wide), wide
    assert largest_uint32_iota(lowered) < 2**32
