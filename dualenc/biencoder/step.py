"""The bi-encoder's pure train step: `(state, batch, rng) -> (state, metrics)`.

The loss is written over the global batch (in-batch + hard negatives); jit and the batch sharding
make the negatives cross-device. Gradient accumulation (micro-batches, each with its own in-batch
negatives) and GradCache (full-batch negatives, embeddings computed in chunks) are both inside the
step; packed rows (`data.packing`) are embedded per segment and gathered back per text.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dualenc.biencoder import loss_registry
from dualenc.inference import packing
from dualenc.models import dual_encoder
from dualenc.training.state import apply_gradients


def make_loss_fn(lcfg, normalize: bool = False):
    """`loss_registry.make_loss(loss)`: (q (B,D), p (B,1+k,D), batch) -> (loss, metrics);
    `normalize` (the tower's) renormalises Matryoshka prefixes."""
    return loss_registry.make_loss(lcfg, normalize=normalize)


def embed_fns(spec, dropout: bool):
    """(embed_q, embed_p), each (params, ids, mask, rng) -> (..., D)."""

    def mk(fn):
        def embed(params, ids, mask, rng):
            rngs = {"dropout": rng} if dropout else None
            return fn(spec, params, ids, mask, deterministic=not dropout, rngs=rngs)

        return embed

    return mk(dual_encoder.embed_queries), mk(dual_encoder.embed_passages)


# ----------------------------------------------------------------------------- gradients


def plain_grads(embed_q, embed_p, loss_fn, params, batch, rng):
    """(loss, metrics, grads) with one forward/backward over the whole (micro-)batch."""
    rq, rp = jax.random.split(rng)

    def f(prm):
        q = _embed_side(embed_q, prm, batch, "q", rq)  # (B, D)
        p = _embed_side(embed_p, prm, batch, "p", rp)  # (B, 1+k, D)
        return loss_fn(q, p, batch)

    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, grads


def _embed_side(embed, prm, batch, side: str, rng):
    """One side's embeddings; packed rows (`packing.pack_batch`) go to `embed.packed` (set by
    `make_train_step`) and are gathered back per text: the batch's layout picks the path."""
    if f"{side}_segment_ids" not in batch:
        return embed(prm, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], rng)
    ids, segment_ids = batch[f"{side}_input_ids"], batch[f"{side}_segment_ids"]
    emb = embed.packed(prm, ids, segment_ids, rng)  # (R, S, D)
    return packing.gather_segments(emb, batch[f"{side}_text_row"], batch[f"{side}_text_seg"])


def _chunked(x, chunk: int):
    """(N, ...) -> (N/chunk, chunk, ...), chunk j = rows {j, j + N/chunk, ...} (strided, so each
    chunk keeps the batch's device layout)."""
    n = x.shape[0]
    if n % chunk:
        raise ValueError(f"cache_chunk_size {chunk} must divide {n} (rows in the batch)")
    return jnp.swapaxes(x.reshape(chunk, n // chunk, *x.shape[1:]), 0, 1)


def _unchunked(x):
    """Inverse of `_chunked`: (N/chunk, chunk, ...) -> (N, ...)."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def cache_grads(embed_q, embed_p, loss_fn, params, batch, rng, chunk: int):
    """GradCache: embed without grad in chunks, grads of the loss w.r.t. the embeddings, then
    re-embed each chunk under vjp to accumulate parameter grads. Each chunk's dropout key is
    folded from its index, so both passes draw the same masks: equal to `plain_grads` with
    dropout off, and exact GradCache (replayed masks) with dropout on."""
    rq, rp = jax.random.split(rng)
    b, k1 = batch["p_ids"].shape
    lp = batch["p_input_ids"].shape[-1]
    q_ids, q_mask = (
        _chunked(batch["q_input_ids"], chunk),
        _chunked(batch["q_attention_mask"], chunk),
    )
    p_ids = _chunked(batch["p_input_ids"].reshape(b * k1, lp), chunk)
    p_mask = _chunked(batch["p_attention_mask"].reshape(b * k1, lp), chunk)

    def embed_all(embed, ids, mask, r):
        out = jax.lax.map(
            lambda a: embed(params, a[0], a[1], jax.random.fold_in(r, a[2])),
            (ids, mask, jnp.arange(ids.shape[0])),
        )
        return jax.lax.stop_gradient(_unchunked(out))

    q = embed_all(embed_q, q_ids, q_mask, rq)  # (B, D)
    p = embed_all(embed_p, p_ids, p_mask, rp).reshape(b, k1, -1)  # (B, 1+k, D)
    (loss, metrics), (gq, gp) = jax.value_and_grad(
        lambda q_, p_: loss_fn(q_, p_, batch), argnums=(0, 1), has_aux=True
    )(q, p)
    gq, gp = _chunked(gq, chunk), _chunked(gp.reshape(b * k1, -1), chunk)

    def accumulate(embed, ids, mask, g, r, acc):
        def body(acc, a):
            i, m, gc, idx = a
            _, vjp = jax.vjp(lambda prm: embed(prm, i, m, jax.random.fold_in(r, idx)), params)
            return jax.tree.map(jnp.add, acc, vjp(gc)[0]), None

        acc, _ = jax.lax.scan(body, acc, (ids, mask, g, jnp.arange(ids.shape[0])))
        return acc

    grads = jax.tree.map(jnp.zeros_like, params)
    grads = accumulate(embed_q, q_ids, q_mask, gq, rq, grads)
    grads = accumulate(embed_p, p_ids, p_mask, gp, rp, grads)
    return loss, metrics, grads


def make_train_step(config, spec, tx: optax.GradientTransformation, schedule):
    """The pure step `(state, batch, rng) -> (state, metrics)` (not yet jitted)."""
    tcfg = config.train
    embed_q, embed_p = embed_fns(spec, bool(tcfg.dropout))
    loss_fn = make_loss_fn(config.loss, bool(spec.normalize))
    accum, chunk = int(tcfg.grad_accum_steps), int(tcfg.cache_chunk_size)
    segs = int(config.data.get("pack_max_segments", packing.DEFAULT_MAX_SEGMENTS))
    embed_q.packed, embed_p.packed = packing.packed_embed_fns(spec, bool(tcfg.dropout), segs)

    def grads_fn(params, batch, rng):
        if chunk > 0:
            return cache_grads(embed_q, embed_p, loss_fn, params, batch, rng, chunk)
        return plain_grads(embed_q, embed_p, loss_fn, params, batch, rng)

    def accumulated(params, batch, rng):
        micro = jax.tree.map(lambda x: _chunked(x, x.shape[0] // accum), batch)  # [i] = x[i::A]

        def body(acc, a):
            mb, i = a
            out = grads_fn(params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, out), None

        zero = jax.eval_shape(grads_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
        tot, _ = jax.lax.scan(body, zero, (micro, jnp.arange(accum)))
        return jax.tree.map(lambda x: x / accum, tot)

    def train_step(state, batch, rng):
        if "q_segment_ids" in batch and (chunk > 0 or accum > 1):  # packed rows (data.packing)
            raise ValueError("packed batches need train.cache_chunk_size=0, grad_accum_steps=1")
        params = state["params"]
        rng = jax.random.fold_in(rng, state["step"])
        fn = grads_fn if accum <= 1 else accumulated
        loss, metrics, grads = fn(params, batch, rng)
        masks = ("q_attention_mask", "p_attention_mask", "q_segment_ids", "p_segment_ids")
        tokens = sum(jnp.sum(batch[k] > 0) for k in masks if k in batch)
        return apply_gradients(state, grads, tx, schedule, {**metrics, "loss": loss}, tokens)

    return train_step
