"""Chunked CPU attention (custom VJP) against a plain reference: values, masks, dropout, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualenc.models import attention, dropout, target

B, L, N, D = 6, 10, 3, 4
RATE = 0.3


def _reference(q, k, v, mask, key, rate, wrap=dropout.WRAP):
    """The textbook form: softmax over keys with masked scores, dropout on the whole tensor."""
    scores = jnp.einsum("bind,bjnd->bnij", q, k) / np.sqrt(q.shape[-1])  # (B, N, Lq, Lk)
    keep = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
    probs = jax.nn.softmax(jnp.where(keep != 0, scores, jnp.finfo(jnp.float32).min), axis=-1)
    if key is not None:  # the mask is drawn keys-major, (B, N, Lk, Lq), as the modules do
        shape = jnp.swapaxes(probs, -1, -2).shape
        kept = jnp.swapaxes(dropout.keep_mask(key, rate, shape, wrap), -1, -2)
        probs = jnp.where(kept, probs / (1 - rate), 0.0)
    return jnp.einsum("bnij,bjnd->bind", probs, v)


def _inputs(mask_kind, dtype=jnp.float32):
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.standard_normal((B, L, N, D)), dtype) for _ in range(3))
    if mask_kind == "keys":
        mask = jnp.asarray(np.arange(L)[None, :] < r.integers(2, L, (B, 1)), jnp.int32)
        mask = mask.at[3].set(0)  # an all-padding row (a query that sees no key)
    else:  # packed rows: block-diagonal, segment 0 = padding
        seg = r.integers(0, 3, (B, L))
        mask = jnp.asarray((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0))
    return q, k, v, mask


def _loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)) * jnp.arange(D, dtype=jnp.float32))


@pytest.mark.parametrize("mask_kind", ["keys", "segments"])
@pytest.mark.parametrize("with_dropout", [False, True])
@pytest.mark.parametrize(
    "n,n_bwd,d", [(1, 1, 1), (3, 2, 1), (6, 3, 1), (1, 3, 2), (3, 1, 2), (2, 1, 3)]
)
def test_chunked_equals_reference(mask_kind, with_dropout, n, n_bwd, d):
    q, k, v, mask = _inputs(mask_kind)
    key = jax.random.key(7) if with_dropout else None
    words = dropout.key_words(key) if with_dropout else None
    rate = RATE if with_dropout else 0.0

    def ref(q, k, v):
        return _reference(q, k, v, mask, key, rate)

    def chunked(q, k, v):
        return attention._chunked(q, k, v, mask, words, rate, n, n_bwd, d, False)

    np.testing.assert_allclose(chunked(q, k, v), ref(q, k, v), atol=1e-6)
    grads = jax.grad(_loss(chunked), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(_loss(ref), argnums=(0, 1, 2))(q, k, v)
    for got, exp in zip(grads, want, strict=True):
        np.testing.assert_allclose(got, exp, atol=2e-6)


@pytest.mark.parametrize("n,n_bwd,d", [(1, 1, 1), (3, 2, 1), (1, 3, 2)])
def test_wide_dropout_index_equals_reference(n, n_bwd, d):
    """Pod-sized batches (`wide`: the flat index of the scores would pass 2^32): each row numbers
    a block of the dropout hash. Forward and backward draw the mask that `dropout.keep_mask`
    draws for the whole tensor once its index is split into rows (here by a small `wrap`)."""
    q, k, v, mask = _inputs("keys")
    key = jax.random.key(7)
    words = dropout.key_words(key)
    wrap = 512  # N * L * L = 300 < wrap <= B * N * L * L: one block a row

    def ref(q, k, v):
        return _reference(q, k, v, mask, key, RATE, wrap)

    def chunked(q, k, v):
        return attention._chunked(q, k, v, mask, words, RATE, n, n_bwd, d, True)

    np.testing.assert_allclose(chunked(q, k, v), ref(q, k, v), atol=1e-6)
    narrow = _reference(q, k, v, mask, key, RATE)
    assert not np.allclose(narrow, ref(q, k, v))  # the blocked hash is another mask
    grads = jax.grad(_loss(chunked), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(_loss(ref), argnums=(0, 1, 2))(q, k, v)
    for got, exp in zip(grads, want, strict=True):
        np.testing.assert_allclose(got, exp, atol=2e-6)


def test_chunked_bf16_close_to_reference():
    q, k, v, mask = _inputs("keys", jnp.bfloat16)
    got = attention._chunked(q, k, v, mask, None, 0.0, 3, 2, 1, False)
    want = _reference(*(x.astype(jnp.float32) for x in (q, k, v)), mask, None, 0.0)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2)


def test_num_chunks_fits_budget_and_divides_the_shard():
    per_row = 12 * 256 * 256 * 4  # 3 MiB of scores per sequence
    assert attention.num_chunks((32, 256, 12, 32), 256, 1, 8 * per_row) == 4  # 8 rows a chunk
    assert attention.num_chunks((32, 256, 12, 32), 256, 1, 3 * per_row) == 16  # 11 → 16 divides
    assert attention.num_chunks((32, 256, 12, 32), 256, 4, 2 * per_row) == 4  # 8 a shard
    assert attention.num_chunks((32, 256, 12, 32), 256, 1, 1 << 40) == 1
    assert attention.num_chunks((32, 256, 12, 32), 256, 1, 1) == 16  # ≥ 2 rows a chunk
    assert attention.num_chunks((7, 256, 12, 32), 256, 1, 1) == 7  # odd: one row a chunk


def test_rate_one_drops_everything():
    q, k, v, mask = _inputs("keys")

    class Full:
        rate = 1.0

    assert not np.any(attention.attention(q, k, v, mask, Full(), deterministic=False))


def test_bert_train_step_same_with_and_without_chunks(monkeypatch):
    """The model path: Dropout.words keys each layer's mask; chunking changes nothing."""
    from dualenc.models import bert

    cfg = bert.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, attention_probs_dropout_prob=0.2,
    )  # fmt: skip
    model = bert.BertModel(cfg)
    r = np.random.default_rng(1)
    ids = jnp.asarray(r.integers(1, 50, (8, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None, :] < r.integers(3, 13, (8, 1)), jnp.int32)
    params = model.init(jax.random.key(0), ids, mask)["params"]

    def run():
        def loss(p):
            rngs = {"dropout": jax.random.key(5)}
            h, _ = model.apply({"params": p}, ids, mask, deterministic=False, rngs=rngs)
            return jnp.sum(jnp.tanh(h))

        return jax.value_and_grad(loss)(params)

    monkeypatch.setattr(attention, "FORWARD_BYTES", 1 << 40)
    monkeypatch.setattr(attention, "BACKWARD_BYTES", 1 << 40)
    whole = run()
    monkeypatch.setattr(attention, "FORWARD_BYTES", 1)
    monkeypatch.setattr(attention, "BACKWARD_BYTES", 1)
    chunked = run()
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(whole[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    h_eval, _ = model.apply({"params": params}, ids, mask)
    h_train, _ = model.apply(
        {"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(5)}
    )
    assert not np.allclose(h_eval, h_train)  # the dropout really ran


@pytest.mark.parametrize("mask_kind", ["keys", "segments"])
def test_accelerator_attention_is_dot_product_attention(mask_kind, monkeypatch):
    """Compiled for TPU (or GPU), attention without dropout goes to `jax.nn.dot_product_attention`
    (XLA's here; cuDNN's for bf16 on GPU) and equals the textbook form, values and gradients;
    with dropout it keeps the hashed-mask plain form. The target is the mesh's, not this host's."""
    q, k, v, mask = _inputs(mask_kind)
    calls = []
    fused = attention.fused
    monkeypatch.setattr(attention, "fused", lambda *a: calls.append(a[-1]) or fused(*a))
    drop = type("Drop", (), {"rate": 0.0})()

    def on_tpu(q, k, v):
        with target.compiling_for(platform="tpu", devices=8):
            return attention.attention(q, k, v, mask, drop, deterministic=True)

    ref = lambda q, k, v: _reference(q, k, v, mask, None, 0.0)  # noqa: E731
    np.testing.assert_allclose(on_tpu(q, k, v), ref(q, k, v), atol=1e-6)
    assert calls == ["xla"]
    grads = jax.grad(_loss(on_tpu), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(_loss(ref), argnums=(0, 1, 2))(q, k, v)
    for got, exp in zip(grads, want, strict=True):
        np.testing.assert_allclose(got, exp, atol=2e-6)
    calls.clear()
    attention.attention(q, k, v, mask, drop, deterministic=True)  # this host: the CPU paths
    assert calls == []


def test_cudnn_only_where_it_takes_the_shapes():
    q = jnp.zeros((2, 16, 4, 64), jnp.bfloat16)
    assert attention.implementation(q, "gpu") == "cudnn"
    assert attention.implementation(q.astype(jnp.float32), "gpu") == "xla"  # cuDNN: bf16/fp16
    assert attention.implementation(q[:, :15], "gpu") == "xla"  # odd length: no masked backward
    assert attention.implementation(q, "tpu") == "xla"


def test_bf16_scores_and_softmax_are_float32():
    """Plain (dropout) path in bf16: q·k is accumulated and kept in float32 before the softmax
    (casting a bf16 product would round the logits to 3 significant digits)."""
    q, k, _, mask = _inputs("keys", jnp.bfloat16)
    keep = attention._keep(mask)
    probs, _, _ = attention._probs(q, k, keep, None, 0.0, jnp.arange(B, dtype=jnp.uint32))
    f32 = [x.astype(jnp.float32) for x in (q, k)]
    want, _, _ = attention._probs(*f32, keep, None, 0.0, jnp.arange(B, dtype=jnp.uint32))
    np.testing.assert_allclose(probs, want, atol=1e-6)
