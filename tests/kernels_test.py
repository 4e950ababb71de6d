"""The native CPU kernels (attention, dense-layer gradients): they build here, equal XLA, and
the model uses them."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_data import save_tiny_bert

from dualenc.models import attention, kernels, layers

# CI forbids skips: where the kernel cannot exist (no AVX-512 CPU or no compiler) these tests
# check instead that dualenc says so and falls back to XLA's attention.
BUILDABLE = kernels._cpu_has_avx512() and shutil.which(os.environ.get("CXX", "g++")) is not None


def needs_kernel(test):
    def run(*args, **kwargs):
        if not BUILDABLE:
            assert kernels.attention_target() is None
            return None
        assert kernels.attention_target() is not None  # built and registered, in any test order
        return test(*args, **kwargs)

    return functools.wraps(test)(run)


def _loss(f):
    return lambda *args: jnp.sum(jnp.sin(f(*args)))


def _reference(q, k, v, mask):
    keep = attention._keep(mask)
    return attention._attend(q, k, v, keep, None, 0.0, jnp.arange(q.shape[0], dtype=jnp.uint32))


def _inputs(b, length, heads, d, seed=0):
    r = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(r.standard_normal((b, length, heads, d)), jnp.float32) for _ in range(3))
    return q, k, v, r


@needs_kernel
def test_kernel_builds_and_registers():
    assert kernels.attention_target() == kernels.TARGET
    with kernels.disabled():
        assert kernels.attention_target() is None
    assert kernels.attention_target() == kernels.TARGET


@needs_kernel
@pytest.mark.parametrize("b,length,heads,d", [(3, 37, 2, 32), (2, 16, 3, 16), (1, 70, 1, 64)])
def test_kernel_equals_xla_with_key_mask(b, length, heads, d):
    q, k, v, r = _inputs(b, length, heads, d)
    mask = np.arange(length)[None, :] < r.integers(1, length + 1, (b, 1))
    mask[0] = 0  # a row with no key at all: uniform weights, as XLA's softmax of equal scores
    mask = jnp.asarray(mask, jnp.int32)
    got = jax.jit(kernels.fused_attention)(q, k, v, mask)
    np.testing.assert_allclose(got, _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def _packed_ids(r, b, length, pad=3):
    """Contiguous segment ids as packing makes them (texts of 1-70 tokens, a padding tail)."""
    seg = np.zeros((b, length), np.int32)
    for row in seg:
        p, s = 0, 1
        while p < length - pad:
            n = int(r.integers(1, 71))
            row[p : p + n] = s
            p, s = p + n, s + 1
        row[length - pad :] = 0
    return jnp.asarray(seg)


@needs_kernel
def test_kernel_equals_xla_with_packed_segments():
    q, k, v, r = _inputs(4, 33, 3, 32, seed=1)
    seg = r.integers(0, 4, (4, 33))
    mask = jnp.asarray((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0))
    got = jax.jit(kernels.fused_attention)(q, k, v, mask)
    np.testing.assert_allclose(got, _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("contiguous", [True, False])
def test_kernel_takes_segment_ids(contiguous):
    """Segment ids: each query visits only the 16-key words its text spans (contiguous packed
    rows over several 64-key blocks), and ids scattered over the row still give the full mask."""
    q, k, v, r = _inputs(3, 150, 2, 32, seed=2)
    seg = _packed_ids(r, 3, 150) if contiguous else jnp.asarray(r.integers(0, 5, (3, 150)))
    seg = seg.at[2].set(0)  # a row of padding only
    dense = attention.Segments(seg).dense()
    got = jax.jit(functools.partial(kernels.fused_attention, segments=True))(q, k, v, seg)
    np.testing.assert_allclose(got, _reference(q, k, v, dense), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got, jax.jit(kernels.fused_attention)(q, k, v, dense))


@needs_kernel
@pytest.mark.parametrize("mask_kind", ["keys", "segments", "segment_ids"])
def test_kernel_dropout_and_gradients_equal_xla(mask_kind):
    """Dropout in the kernel draws dropout.py's mask; the VJP (XLA's chunked backward) matches
    autodiff of the plain form, in train and eval mode."""
    from dualenc.models import dropout

    length = 90 if mask_kind == "segment_ids" else 40
    q, k, v, r = _inputs(3, length, 2, 32, seed=3)
    segments = mask_kind == "segment_ids"
    if mask_kind == "keys":
        mask = np.arange(40)[None, :] < r.integers(1, 41, (3, 1))
        mask[1] = 0
        mask = jnp.asarray(mask, jnp.int32)
    elif mask_kind == "segments":
        seg = r.integers(0, 4, (3, 40))
        mask = jnp.asarray((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0))
    else:
        mask = _packed_ids(r, 3, length)
    dense = attention.Segments(mask).dense() if segments else mask
    rows = jnp.arange(3, dtype=jnp.uint32)
    for words, rate in ((None, 0.0), (dropout.key_words(jax.random.key(9)), 0.25)):

        def ref(q, k, v, words=words, rate=rate):
            return attention._attend(q, k, v, attention._keep(dense), words, rate, rows)

        def native(q, k, v, words=words, rate=rate):
            return attention._kernel(q, k, v, mask, words, rate, segments)

        np.testing.assert_allclose(jax.jit(native)(q, k, v), ref(q, k, v), atol=1e-5, rtol=1e-5)

        got = jax.grad(_loss(native), argnums=(0, 1, 2))(q, k, v)
        want = jax.grad(_loss(ref), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_attention_takes_the_kernel_on_one_f32_device(monkeypatch):
    calls = []
    real = kernels.fused_attention
    monkeypatch.setattr(
        kernels,
        "fused_attention",
        lambda *a, **kw: calls.append((a[4], kw["segments"])) or real(*a, **kw),
    )
    q, k, v, _ = _inputs(2, 8, 2, 16)
    mask = jnp.ones((2, 8), jnp.int32)

    class Drop:
        rate = 0.1

        def words(self):
            return jnp.zeros((2,), jnp.uint32)

    monkeypatch.setattr(jax, "device_count", lambda: 1)
    attention.attention(q, k, v, mask, Drop(), deterministic=True)
    attention.attention(q, k, v, mask, Drop(), deterministic=False)  # with the dropout words
    assert len(calls) == 2 and calls[0][0] is None and calls[1][0] is not None
    assert not calls[0][1]
    ids = jnp.asarray([[1, 1, 2, 2, 2, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2]])
    packed = attention.attention(q, k, v, attention.Segments(ids), Drop(), deterministic=True)
    assert len(calls) == 3 and calls[2][1]  # the ids themselves, not the dense mask
    want = _reference(q, k, v, attention.Segments(ids).dense())
    np.testing.assert_allclose(packed, want, atol=1e-5, rtol=1e-5)
    attention.attention(q.astype(jnp.bfloat16), k, v, mask, Drop(), deterministic=True)
    assert len(calls) == 3
    monkeypatch.setattr(jax, "device_count", lambda: 8)  # a mesh: XLA path
    attention.attention(q, k, v, mask, Drop(), deterministic=True)
    xla = attention.attention(q, k, v, attention.Segments(ids), Drop(), deterministic=True)
    assert len(calls) == 3
    np.testing.assert_allclose(xla, want, atol=1e-5, rtol=1e-5)


_ENCODE = """
import json, sys
import numpy as np
from dualenc.inference.encode import encode_texts
from dualenc.models import kernels
from dualenc.models.loading import load_encoder
calls, dense = [], []
real, real_dense = kernels.fused_attention, kernels.dense_grad
kernels.fused_attention = lambda *a, **kw: calls.append(1) or real(*a, **kw)  # traced layers
kernels.dense_grad = lambda *a: dense.append(1) or real_dense(*a)
enc = load_encoder(sys.argv[1])
texts = ["a short one", "", "a much longer text about retrieval " * 12, "mid length text here"]
emb = encode_texts(enc, texts, batch_size=4, progress=False)
import jax, jax.numpy as jnp
from dualenc.models.dual_encoder import embed
ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (4, 24)), jnp.int32)
mask = jnp.asarray(np.arange(24)[None, :] < np.array([[24], [10], [3], [17]]), jnp.int32)
def loss(params):  # train mode: dropout on the attention probabilities
    e = embed(enc.spec, params, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
    return jnp.sum(jnp.tanh(e @ e.T))
value, grads = jax.value_and_grad(loss)(enc.params)
flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
print(json.dumps({"target": kernels.attention_target(), "calls": len(calls), "dense": len(dense),
                  "emb": emb.tolist(),
                  "loss": float(value), "grads": flat[::97].tolist()}))
"""


@needs_kernel
def test_encode_on_one_device_uses_the_kernel_and_matches_xla(tmp_path, minilm_path):
    """The real path, in fresh processes with one CPU device: kernel on vs DUALENC_KERNELS=0."""
    tiny_model_dir = save_tiny_bert(tmp_path / "tiny", minilm_path, seed=2)
    out = {}
    for flag in ("1", "0"):
        env = dict(os.environ, DUALENC_KERNELS=flag, XLA_FLAGS="")
        done = subprocess.run(
            [sys.executable, "-c", _ENCODE, str(tiny_model_dir)],
            capture_output=True, text=True, env=env, timeout=300, check=True,
        )  # fmt: skip
        out[flag] = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["1"]["target"] == kernels.TARGET and out["0"]["target"] is None
    assert out["1"]["calls"] > 0 and out["0"]["calls"] == 0
    assert out["1"]["dense"] > 0 and out["0"]["dense"] == 0  # the gradients came from dense.cc
    np.testing.assert_allclose(out["1"]["emb"], out["0"]["emb"], atol=1e-5)
    np.testing.assert_allclose(out["1"]["loss"], out["0"]["loss"], rtol=1e-5)  # same dropout
    np.testing.assert_allclose(out["1"]["grads"], out["0"]["grads"], atol=1e-5, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize(
    "t,k,n", [(7, 5, 3), (300, 390, 40), (257, 13, 33), (600, 24, 70), (0, 4, 5)]
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_dense_grad_equals_the_exact_sums(t, k, n, threads):
    """Edges of every blocking level: rows past a 256-row panel, features past 12 x 32 tiles and a
    480-row block, a split across threads that does not divide, no rows at all."""
    r = np.random.default_rng(t + k + n)
    x = r.standard_normal((t, k)).astype(np.float32)
    g = r.standard_normal((t, n)).astype(np.float32)
    dw, db = jax.jit(functools.partial(kernels.dense_grad, threads=threads))(x, g)
    np.testing.assert_allclose(dw, x.astype(np.float64).T @ g, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(db, g.astype(np.float64).sum(0), atol=1e-4, rtol=1e-5)


@needs_kernel
def test_dense_layer_gradients_come_from_the_kernel(monkeypatch):
    calls = []
    real = kernels.dense_grad
    monkeypatch.setattr(kernels, "dense_grad", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 50, 40)), jnp.float32)

    def grads(use_bias, dtype=jnp.float32):
        dense = layers.Dense(24, use_bias=use_bias, dtype=dtype)
        params = dense.init(jax.random.key(0), x)
        params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
        loss = lambda p, x: jnp.sum(jnp.sin(dense.apply(p, x)))  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    for use_bias in (True, False):
        calls.clear()
        got = grads(use_bias)
        assert calls == [1]
        with kernels.disabled():
            want = grads(use_bias)
        assert calls == [1]
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    grads(True, jnp.bfloat16)
    monkeypatch.setattr(jax, "device_count", lambda: 8)  # a mesh: XLA path
    grads(True)
    assert calls == [1]
