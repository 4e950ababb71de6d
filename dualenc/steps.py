"""The pure train step and what it is built from: model set-up, gradients, state, jit.

The step is `train_step(state, batch, rng) -> (state, metrics)` with state = {step, params,
opt_state}, jitted with explicit shardings, the state donated, and compiled ahead of time per batch
shape (`CompiledStep`) so compile time is measured apart from step time. The loss is written over
the global batch (in-batch + hard negatives); jit and the batch sharding make the negatives
cross-device. Gradient accumulation (micro-batches, each with its own in-batch negatives) and
GradCache (full-batch negatives, embeddings computed in chunks) are both inside the step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import losses, sharding
from dualenc.inference import packing
from dualenc.models import dual_encoder, loading
from dualenc.models.registry import get_arch
from dualenc.tokenization import load_tokenizer

# ----------------------------------------------------------------------------- model set-up


def load_base_encoder(mcfg, *, weights: bool = True) -> loading.Encoder:
    """The Encoder of `model.name_or_path` (tokenizer, pooling, architecture) with the config's
    dtype / remat / pooling / normalize; random weights if `model.init_random`. `weights=False`
    leaves ShapeDtypeStructs as params (a resume restores the real ones from the checkpoint)."""
    if mcfg.init_random:
        return _random_encoder(mcfg, weights)
    if len(mcfg.config_overrides):
        raise ValueError("model.config_overrides changes the architecture: set model.init_random")
    enc = _load_pretrained(
        str(mcfg.name_or_path), mcfg.dtype, mcfg.pooling or None, bool(mcfg.normalize), weights
    )
    cfg = dataclasses.replace(enc.config, dtype=mcfg.dtype, remat=bool(mcfg.remat))
    return dataclasses.replace(enc, config=cfg, spec=dataclasses.replace(enc.spec, config=cfg))


@functools.lru_cache(maxsize=4)
def _load_pretrained(path: str, dtype: str, pooling, normalize: bool, weights: bool):
    """Cached: tests and the benchmark build several trainers from one model dir."""
    return loading.load_encoder(
        path, dtype=dtype, pooling=pooling, normalize=normalize, weights=weights
    )


def _random_encoder(mcfg, weights: bool) -> loading.Encoder:
    """An Encoder with random weights of `name_or_path`'s architecture (config.json there, with
    `config_overrides`) and its tokenizer; the pretrained weights are never read."""
    root = Path(mcfg.name_or_path)
    if not (root / "config.json").is_file():
        raise ValueError(f"model.init_random needs a local model dir with config.json: {root}")
    hf = json.loads((root / "config.json").read_text())
    cfg = get_arch(hf["model_type"]).config_cls.from_hf(hf)
    overrides = dict(mcfg.config_overrides)
    bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
    if bad:
        raise ValueError(f"model.config_overrides: unknown fields {bad} of {type(cfg).__name__}")
    cfg = dataclasses.replace(cfg, dtype=mcfg.dtype, remat=bool(mcfg.remat), **overrides)
    spec = dual_encoder.EncoderSpec(
        arch=hf["model_type"], config=cfg, pooling=mcfg.pooling or "mean", normalize=mcfg.normalize
    )
    if weights:
        params = random_tower_params(spec, int(mcfg.init_seed))
    else:
        init = functools.partial(dual_encoder.init_tower, spec)
        params = jax.eval_shape(init, jax.random.key(int(mcfg.init_seed)))
    return loading.Encoder(
        arch=spec.arch,
        config=cfg,
        params=params,
        tokenizer=load_tokenizer(root),
        pooling=spec.pooling,
        normalize=spec.normalize,
        max_length=int(cfg.max_position_embeddings),
        source="random init",
        spec=spec,
        model_dir=root,
    )


def random_tower_params(spec, seed: int):
    """Freshly initialised tower params for `spec` (tiny test models, training from scratch)."""
    return jax.tree.map(np.asarray, dual_encoder.init_tower(spec, jax.random.key(seed)))


def init_dual_params(base, shared: bool) -> dict:
    """DualEncoder params: {'encoder': tower} (tied) or {'q_encoder', 'p_encoder'} (two copies);
    ShapeDtypeStructs when `base` holds abstract params."""
    params = dual_encoder.init_dual_params(base.spec, None, shared, tower_params=base.params)
    return jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else np.array(x), params)


def tower_encoders(base, host_params) -> tuple[loading.Encoder, loading.Encoder]:
    """(query Encoder, passage Encoder) holding `host_params` (numpy, e.g. multihost.to_host)."""
    if "encoder" in host_params:
        enc = loading.encoder_from_params(base, host_params["encoder"])
        return enc, enc
    return (
        loading.encoder_from_params(base, host_params["q_encoder"]),
        loading.encoder_from_params(base, host_params["p_encoder"]),
    )


# ----------------------------------------------------------------------------- loss + embed


def make_loss_fn(lcfg):
    """`losses.make_loss(loss)`: (q (B,D), p (B,1+k,D), batch) -> (loss, metrics)."""
    return losses.make_loss(lcfg)


def _embed_fns(spec, dropout: bool):
    """(embed_q, embed_p), each (params, ids, mask, rng) -> (..., D)."""

    def mk(fn):
        def embed(params, ids, mask, rng):
            rngs = {"dropout": rng} if dropout else None
            return fn(spec, params, ids, mask, deterministic=not dropout, rngs=rngs)

        return embed

    return mk(dual_encoder.embed_queries), mk(dual_encoder.embed_passages)


# ----------------------------------------------------------------------------- gradients


def _plain_grads(embed_q, embed_p, loss_fn, params, batch, rng):
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
    return emb[batch[f"{side}_text_row"], batch[f"{side}_text_seg"]]


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


def _cache_grads(embed_q, embed_p, loss_fn, params, batch, rng, chunk: int):
    """GradCache: embed without grad in chunks, grads of the loss w.r.t. the embeddings, then
    re-embed each chunk under vjp to accumulate parameter grads. Each chunk's dropout key is
    folded from its index, so both passes draw the same masks: equal to `_plain_grads` with
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
    embed_q, embed_p = _embed_fns(spec, bool(tcfg.dropout))
    loss_fn = make_loss_fn(config.loss)
    accum, chunk = int(tcfg.grad_accum_steps), int(tcfg.cache_chunk_size)
    segs = int(config.data.get("pack_max_segments", packing.DEFAULT_MAX_SEGMENTS))
    embed_q.packed, embed_p.packed = packing.packed_embed_fns(spec, bool(tcfg.dropout), segs)

    def grads_fn(params, batch, rng):
        if chunk > 0:
            return _cache_grads(embed_q, embed_p, loss_fn, params, batch, rng, chunk)
        return _plain_grads(embed_q, embed_p, loss_fn, params, batch, rng)

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
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
        }
        masks = ("q_attention_mask", "p_attention_mask", "q_segment_ids", "p_segment_ids")
        tokens = sum(jnp.sum(batch[k] > 0) for k in masks if k in batch)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
            "num_tokens": tokens.astype(jnp.float32),  # global batch (all hosts)
        }
        return new_state, metrics

    return train_step


# ----------------------------------------------------------------------------- state + jit


def build_mesh(config):
    return sharding.make_mesh(tuple(config.mesh.shape))


def mesh_rules(config) -> list:
    return [tuple(r) for r in config.mesh.rules]


def state_shardings(params, tx, mesh, rules) -> dict:
    """Shardings of {step, params, opt_state} for `params` (arrays or ShapeDtypeStructs): params
    by the partition rules, optimizer moments like their params, counters replicated."""
    rep = NamedSharding(mesh, P())
    p_sh = sharding.param_shardings(params, rules, mesh)
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, p_sh, transform_non_params=lambda _: rep
    )
    return {"step": rep, "params": p_sh, "opt_state": opt_sh}


def abstract_state(params, tx, mesh, rules) -> dict:
    """ShapeDtypeStructs (with shardings) of the state, via `jax.eval_shape`: a restore target
    that needs neither the pretrained weights nor device memory."""
    shapes = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
    }
    shapes["opt_state"] = jax.eval_shape(tx.init, shapes["params"])
    sh = state_shardings(shapes["params"], tx, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)


def create_state(params, tx, mesh, rules) -> tuple[dict, dict]:
    """(state on the mesh, state shardings): params placed by the partition rules, the optimizer
    state initialised under jit with its shardings declared."""
    sh = state_shardings(params, tx, mesh, rules)
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, sh["params"])
    state = {
        "step": jax.device_put(jnp.zeros((), jnp.int32), sh["step"]),
        "params": params,
        "opt_state": jax.jit(tx.init, out_shardings=sh["opt_state"])(params),
    }
    return state, sh


def jit_train_step(step_fn, state_sh, mesh):
    """jit with explicit in/out shardings; the state (argument 0) is donated."""
    rep = NamedSharding(mesh, P())
    return jax.jit(
        step_fn,
        in_shardings=(state_sh, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )


class CompiledStep:
    """A jitted step compiled ahead of time (`lower().compile()`) once per batch signature, so
    the loop can report compile time apart from step time. Called like the jitted step."""

    def __init__(self, jitted):
        self.jitted = jitted
        self.compile_seconds = 0.0
        self._compiled: dict[tuple, Any] = {}

    def __call__(self, state, batch, rng):
        key = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))
        fn = self._compiled.get(key)
        if fn is None:
            t0 = time.perf_counter()
            fn = self._compiled[key] = self.jitted.lower(state, batch, rng).compile()
            dt = time.perf_counter() - t0
            self.compile_seconds += dt
            shapes = {k: shape for k, shape, _ in key}
            logging.info("compiled the train step for %s in %.1fs", shapes, dt)
        return fn(state, batch, rng)

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)
