"""GradCache on the 8-device mesh equals the plain step (tiny random BERT, multi-positive batch).

Dropout: GradCache embeds in chunks, and each chunk draws its masks from `fold_in(key, chunk)`
in the no-grad pass and again, replayed, in the vjp pass. The plain step draws one mask tensor
for the whole batch from `key`, so under dropout the two cannot be equal by construction (other
random bits, not other math). With dropout on, the reference is therefore the plain full-batch
gradient of the same forward with the same per-chunk masks; with dropout off it is the plain
step itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualenc import sharding
from dualenc.biencoder import model as bi_model
from dualenc.biencoder import step as _steps

REPO = Path(__file__).resolve().parents[1]
B, K, LQ, LP, CHUNK = 16, 1, 8, 12, 8
TOL = 1e-5


def _fn(*names):
    for n in names:
        if hasattr(_steps, n):
            return getattr(_steps, n)
    raise AttributeError(f"{_steps.__name__} has none of {names}")


cache_grads = _fn("cache_grads", "_cache_grads")
plain_grads = _fn("plain_grads", "_plain_grads")
embed_fns = _fn("embed_fns", "_embed_fns")
chunked = _fn("chunked", "_chunked")
unchunked = _fn("unchunked", "_unchunked")


@pytest.fixture(scope="module")
def setup():
    """(config, spec, params, host batch): configs/tiny.py (random 1-layer BERT, dropout 0.1)."""
    sys.path.insert(0, str(REPO))
    from configs import tiny

    c = tiny.get_config()
    base = bi_model.load_base_encoder(c.model)
    params = bi_model.initial_dual_params(base, True)
    r = np.random.default_rng(0)

    def tokens(shape, lengths):
        ids = r.integers(1000, 2000, size=shape, dtype=np.int32)
        mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
        return ids * mask, mask

    q_ids, q_mask = tokens((B, LQ), r.integers(3, LQ + 1, size=B))
    p_ids, p_mask = tokens((B, 1 + K, LP), r.integers(3, LP + 1, size=(B, 1 + K)))
    pid = np.arange(B * (1 + K), dtype=np.int32).reshape(B, 1 + K)
    qpos = np.full((B, 2), -1, np.int32)
    qpos[:, 0] = pid[:, 0]
    qpos[1, 1] = pid[10, 0]  # query 1's second positive is row 10's (another device)
    batch = {
        "q_input_ids": q_ids,
        "q_attention_mask": q_mask,
        "p_input_ids": p_ids,
        "p_attention_mask": p_mask,
        "p_ids": pid,
        "q_pos_ids": qpos,
    }
    return c, base.spec, params, batch


def _loss_fn(c):
    return _steps.make_loss_fn(c.loss)


def _per_chunk_reference(embed_q, embed_p, loss_fn, params, batch, rng, chunk):
    """Plain value_and_grad over the whole batch, embedding chunk j with `fold_in(key, j)`:
    the masks GradCache draws, without its no-grad/vjp split."""
    rq, rp = jax.random.split(rng)
    b, k1 = batch["p_ids"].shape
    lp = batch["p_input_ids"].shape[-1]

    def embed_all(embed, prm, ids, mask, r):
        ids, mask = chunked(ids, chunk), chunked(mask, chunk)
        outs = [embed(prm, ids[j], mask[j], jax.random.fold_in(r, j)) for j in range(len(ids))]
        return unchunked(jnp.stack(outs))

    def f(prm):
        q = embed_all(embed_q, prm, batch["q_input_ids"], batch["q_attention_mask"], rq)
        flat = lambda x: x.reshape(b * k1, lp)  # noqa: E731
        p = embed_all(embed_p, prm, flat(batch["p_input_ids"]), flat(batch["p_attention_mask"]), rp)
        return loss_fn(q, p.reshape(b, k1, -1), batch)

    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, grads


def _run(fn, params, batch, mesh=None):
    """jit(fn)(params, batch); on `mesh` the batch is split over all devices, params replicated."""
    if mesh is not None:
        batch = sharding.shard_batch(batch, mesh)
        params = jax.device_put(
            params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        )
    loss, _, grads = jax.jit(fn)(params, batch)
    return float(loss), jax.device_get(grads)


def _max_delta(a, b):
    return max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh((8, 1))


def test_gradcache_sharded_equals_plain_step_dropout_off(setup, mesh):
    c, spec, params, batch = setup
    eq, ep = embed_fns(spec, False)
    lf, rng = _loss_fn(c), jax.random.key(0)
    want_loss, want = _run(lambda p, b: plain_grads(eq, ep, lf, p, b, rng), params, batch)
    got_loss, got = _run(
        lambda p, b: cache_grads(eq, ep, lf, p, b, rng, CHUNK), params, batch, mesh
    )
    delta = _max_delta(got, want)
    print(f"GradCache (8,1) mesh vs plain single device, dropout off: max |dgrad| {delta:.2e}")
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    assert delta <= TOL
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(want)) > 1e-3


@pytest.fixture(scope="module")
def dropout_reference(setup):
    """The per-chunk-mask plain step, dropout on, with the trainer's PRNG (train.rng_impl)."""
    c, spec, params, batch = setup
    eq, ep = embed_fns(spec, True)
    lf, rng = _loss_fn(c), jax.random.key(1, impl=c.train.rng_impl)
    loss, grads = _run(
        lambda p, b: _per_chunk_reference(eq, ep, lf, p, b, rng, CHUNK), params, batch
    )
    return rng, loss, grads


def test_gradcache_sharded_dropout_replays_chunk_masks(setup, mesh, dropout_reference):
    c, spec, params, batch = setup
    rng, want_loss, want = dropout_reference
    eq, ep = embed_fns(spec, True)
    lf = _loss_fn(c)
    got_loss, got = _run(
        lambda p, b: cache_grads(eq, ep, lf, p, b, rng, CHUNK), params, batch, mesh
    )
    delta = _max_delta(got, want)
    print(f"GradCache (8,1) mesh vs per-chunk-mask plain step, dropout on: {delta:.2e}")
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    assert delta <= TOL
    # Dropout really is on: the dropout-off gradient is far away.
    eq0, ep0 = embed_fns(spec, False)
    _, off = _run(lambda p, b: plain_grads(eq0, ep0, lf, p, b, rng), params, batch)
    assert _max_delta(off, want) > 100 * TOL


def test_wrong_replayed_key_is_caught(setup, mesh, dropout_reference):
    """A vjp pass that draws other masks than the no-grad pass (the bug GradCache must avoid)
    fails the dropout comparison above."""
    c, spec, params, batch = setup
    rng, _, want = dropout_reference
    eq, ep = embed_fns(spec, True)
    lf = _loss_fn(c)

    def replay_wrong(embed):
        calls = []

        def wrapped(prm, ids, mask, r):
            calls.append(1)  # first trace: the no-grad pass; later traces: the vjp re-forward
            return embed(prm, ids, mask, r if len(calls) == 1 else jax.random.fold_in(r, 7))

        return wrapped

    _, bad = _run(
        lambda p, b: cache_grads(replay_wrong(eq), replay_wrong(ep), lf, p, b, rng, CHUNK),
        params,
        batch,
        mesh,
    )
    assert _max_delta(bad, want) > 100 * TOL
