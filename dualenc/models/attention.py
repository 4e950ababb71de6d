"""Scaled dot-product attention over a padding or block-diagonal mask, with a chunked CPU path.

Why the chunks: at 32 x 256 tokens a MiniLM layer's scores are B x N x L x L = 25 M floats (100 MB),
and XLA:CPU makes several passes over them (max, exp, sum, divide, the mixing dot), each from main
memory. Running the same ops a few sequences at a time under `lax.map` keeps each chunk's scores in
cache: the attention forward takes ~half the time (benchmarks/README.md). Under `jax.grad` the map
alone would still stack every chunk's probabilities for the backward, so the CPU path has its own
VJP that keeps only q, k, v and the output and recomputes each chunk's probabilities in the backward
(as flash attention does): dS = P ∘ (dP − rowsum(dO ∘ O)). Dropout on the probabilities uses the
hashed mask of `dropout.py` indexed by the element's position in the whole (B, N, Lk, Lq) tensor, so
chunked and unchunked attention give the same values, masks and gradients. Float32 on a single CPU
device goes to the native kernels of `kernels.py` instead (forward ~3x faster again).

Compiled for GPU or TPU (`target.platform()`: the mesh being compiled for, not this host),
attention without dropout is `jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU for
bf16/fp16 (flash attention: no score tensor in memory), XLA's on TPU and for float32. With dropout
(which that API lacks) and where shapes are symbolic (`jax.export`) the plain form runs. Every path
computes the scores and the softmax in float32, bf16 operands included (a bf16 q·k rounded before
the cast loses ~3 digits of the logits).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dualenc.models import dropout as dropout_lib
from dualenc.models import kernels, target

# f32 scores per chunk and device, measured best on a Xeon (benchmarks/README.md): the forward
# ~4 sequences of 12 heads x 256 x 256, the backward (5 passes over the scores) ~2
FORWARD_BYTES = 8 << 20
BACKWARD_BYTES = 4 << 20


@flax.struct.dataclass
class Segments:
    """The mask of packed rows as their segment ids (B, L) (0 = padding): a token sees the
    tokens of its own text, padding sees padding. The native kernel takes the ids and visits only
    each text's own keys; the XLA paths use the dense block-diagonal form."""

    ids: jax.Array

    def dense(self):
        """(B, L, L) bool, query × key."""
        return self.ids[:, :, None] == self.ids[:, None, :]


def attention(q, k, v, mask, dropout, deterministic: bool):
    """softmax(q·k/√d) over unmasked keys (float32) mixing v: q, k, v (B, L, N, D) → (B, L, N, D).

    mask (B, L) over keys, (B, L, L) query × key, or `Segments` for packed rows; `dropout` a
    `dropout.Dropout` applied to the probabilities.
    """
    rate = 0.0 if deterministic else float(dropout.rate)
    words = dropout.words() if 0.0 < rate < 1.0 else None
    if rate == 1.0:
        return jnp.zeros_like(q)
    static = all(isinstance(x, int) for x in (*q.shape, k.shape[1]))  # not under jax.export
    # Pod-sized global batches: the flat dropout index of the scores would pass 2^32 and wrap,
    # so rows number blocks instead (`dropout.hash_index_blocks`); smaller batches keep the flat
    # index, and with it the masks of the native kernels, which only run below that size.
    wide = static and q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1] >= dropout_lib.WRAP
    platform = target.platform()
    native = platform == "cpu" and static and not wide and _native(q)
    segments = isinstance(mask, Segments)
    if segments and native:
        return _kernel(q, k, v, mask.ids, words, rate, True)
    mask = mask.dense() if segments else mask
    if native:
        return _kernel(q, k, v, mask, words, rate, False)
    if platform != "cpu" and words is None and static:
        return fused(q, k, v, mask, implementation(q, platform))
    if platform != "cpu" or not static:
        rows = jnp.arange(q.shape[0], dtype=jnp.uint32)
        return _attend(q, k, v, _keep(mask), words, rate, rows, wide)
    d = jax.device_count()
    d = d if q.shape[0] % d == 0 else 1
    n_fwd, n_bwd = (num_chunks(q.shape, k.shape[1], d, b) for b in (FORWARD_BYTES, BACKWARD_BYTES))
    return _chunked(q, k, v, mask, words, rate, n_fwd, n_bwd, d, wide)


def implementation(q, platform: str) -> str:
    """`jax.nn.dot_product_attention`'s implementation: 'cudnn' on GPU where cuDNN's fused
    attention takes the shapes (bf16/fp16, head size ≤ 128 and a multiple of 8, even lengths,
    which its masked backward needs), else 'xla'."""
    lengths_even = q.shape[1] % 2 == 0
    head_ok = q.shape[-1] <= 128 and q.shape[-1] % 8 == 0
    half = q.dtype in (jnp.bfloat16, jnp.float16)
    return "cudnn" if platform == "gpu" and half and head_ok and lengths_even else "xla"


def fused(q, k, v, mask, impl: str = "xla"):
    """`jax.nn.dot_product_attention` over a (B, L) key mask or (B, Lq, Lk) mask; its scores
    and softmax are float32 for bf16 operands. cuDNN takes the mask as a (B, 1, Lq, Lk) bias."""
    keep = mask != 0
    keep = keep[:, None, None, :] if keep.ndim == 2 else keep[:, None]
    if impl == "cudnn":
        keep = jnp.broadcast_to(keep, (q.shape[0], 1, q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=keep, implementation=impl)


def _native(q) -> bool:
    """A head size the kernel has, where the native kernels run (`kernels.usable`: one CPU
    device, float32, the library built)."""
    return q.shape[-1] in (16, 32, 64) and kernels.usable(q)


def num_chunks(q_shape, key_len: int, shards: int, budget: int) -> int:
    """How many `lax.map` steps split each of `shards` batch shards (see `_split`) so that a
    chunk's f32 scores fit `budget`: a divisor of the per-shard batch, keeping ≥ 2 rows a chunk
    where there are (one-row chunks made the backward ~2x slower at L = 512)."""
    batch, q_len, heads = q_shape[0], q_shape[1], q_shape[2]
    local = batch // shards
    want = -(-local * heads * key_len * q_len * 4 // budget)
    n = min(n for n in range(min(max(want, 1), local), local + 1) if local % n == 0)
    return n // 2 if n == local and local % 2 == 0 and n > 1 else n


def _keep(mask):
    """(B, L) key mask or (B, Lq, Lk) → bool broadcastable to keys-major scores (B, N, Lk, Lq)."""
    keep = mask != 0
    return keep[:, None, :, None] if keep.ndim == 2 else jnp.swapaxes(keep, -1, -2)[:, None]


def _probs(q, k, keep, words, rate, rows, wide: bool = False):
    """Keys-major softmax P (B, N, Lk, Lq, float32), P dropped out in q's dtype, and the keep mask.

    rows: each row's index in the whole batch (uint32), which fixes its dropout mask; `wide`:
    the row numbers the block of its scores' index (no flat index past 2^32).
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bjnd,bind->bnji", k, q, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)  # HF: + finfo.min on pads
    probs = jax.nn.softmax(scores, axis=-2)
    if words is None:
        return probs, probs.astype(q.dtype), None
    shape = probs.shape
    per_row = int(np.prod(shape[1:]))
    within = jax.lax.iota(jnp.uint32, per_row).reshape(shape[1:])
    if wide:
        bits = dropout_lib.hash_index_blocks(words, within[None], rows[:, None, None, None])
    else:
        bits = dropout_lib.hash_index(
            words, (rows * jnp.uint32(per_row))[:, None, None, None] + within
        )
    kept = bits >= dropout_lib.threshold(rate)
    dropped = jnp.where(kept, probs / (1.0 - rate), 0.0)
    return probs, dropped.astype(q.dtype), kept


def _attend(q, k, v, keep, words, rate, rows, wide: bool = False):
    _, probs, _ = _probs(q, k, keep, words, rate, rows, wide)
    return jnp.einsum("bnji,bjnd->bind", probs, v)


def _split(x, n, d):
    """(B, ...) → (n, B / n, ...): on each of d batch shards, n contiguous chunks.

    Chunk j holds rows e·B/d + j·c + i (c = B / (d n), shard e, i < c), so with the batch sharded
    over d devices every chunk stays evenly spread over them; with d = 1 this is a plain reshape
    (an interleaved split costs a transpose that made the forward ~35 % slower).
    """
    c = x.shape[0] // (d * n)
    if d == 1:
        return x.reshape(n, c, *x.shape[1:])
    return jnp.swapaxes(x.reshape(d, n, c, *x.shape[1:]), 0, 1).reshape(n, d * c, *x.shape[1:])


def _merge(x, d):
    n, dc = x.shape[:2]
    if d == 1:
        return x.reshape(n * dc, *x.shape[2:])
    x = jnp.swapaxes(x.reshape(n, d, dc // d, *x.shape[2:]), 0, 1)
    return x.reshape(n * dc, *x.shape[3:])


def _rows(j, n, d, c):
    """Global batch rows of chunk j's d·c rows (see `_split`), uint32."""
    r = jnp.arange(d * c, dtype=jnp.uint32)
    return (r // c) * jnp.uint32(n * c) + j * jnp.uint32(c) + r % c


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _chunked(q, k, v, mask, words, rate, n, n_bwd, d, wide):
    return _chunked_fwd(q, k, v, mask, words, rate, n, n_bwd, d, wide)[0]


def _chunked_fwd(q, k, v, mask, words, rate, n, n_bwd, d, wide):
    del n_bwd
    c = q.shape[0] // (d * n)

    def one(args):
        j, qc, kc, vc, mc = args
        return _attend(qc, kc, vc, _keep(mc), words, rate, _rows(j, n, d, c), wide)

    parts = (jnp.arange(n, dtype=jnp.uint32), *(_split(x, n, d) for x in (q, k, v, mask)))
    out = _merge(jax.lax.map(one, parts), d)
    return out, (q, k, v, mask, words, out)


def _chunked_bwd(rate, n_fwd, n, d, wide, res, d_out):
    del n_fwd
    q, k, v, mask, words, out = res
    scale = q.shape[-1] ** -0.5
    c = q.shape[0] // (d * n)

    def one(args):
        j, qc, kc, vc, mc, oc, doc = args
        keep = _keep(mc)
        probs_f, probs, kept = _probs(qc, kc, keep, words, rate, _rows(j, n, d, c), wide)
        dv = jnp.einsum("bnji,bind->bjnd", probs, doc)
        dp = jnp.einsum("bind,bjnd->bnji", doc, vc).astype(jnp.float32)
        if kept is not None:  # dropout passes P's gradient through kept entries, scaled
            dp = jnp.where(kept, dp / (1.0 - rate), 0.0)
        # Σ_j P_j dP_j = Σ_j dropped(P)_j (dO·v_j) = dO·O, so no reduction over the scores
        rowsum = jnp.sum(doc.astype(jnp.float32) * oc.astype(jnp.float32), axis=-1)  # (B, Lq, N)
        ds = probs_f * (dp - jnp.swapaxes(rowsum, 1, 2)[:, :, None, :])
        ds = jnp.where(keep, ds, 0.0).astype(qc.dtype)  # a query with no key: uniform P, no grad
        dq = jnp.einsum("bnji,bjnd->bind", ds, kc) * scale
        dk = jnp.einsum("bnji,bind->bjnd", ds, qc) * scale
        return dq.astype(qc.dtype), dk.astype(kc.dtype), dv.astype(vc.dtype)

    parts = (q, k, v, mask, out, d_out)
    parts = (jnp.arange(n, dtype=jnp.uint32), *(_split(x, n, d) for x in parts))
    dq, dk, dv = (_merge(x, d) for x in jax.lax.map(one, parts))
    return dq, dk, dv, *_no_grads(mask, words)


def _no_grads(mask, words):
    """Zero cotangents of the mask (float0 unless float) and the dropout key words."""
    if jnp.issubdtype(mask.dtype, jnp.floating):
        d_mask = jnp.zeros_like(mask)
    else:
        d_mask = np.zeros(mask.shape, jax.dtypes.float0)
    return d_mask, None if words is None else np.zeros(words.shape, jax.dtypes.float0)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _kernel(q, k, v, mask, words, rate, segments):
    """The native kernels (`kernels.py`): forward, and a backward that recomputes the same
    probabilities and dropout mask per (row, head). mask: segment ids with `segments`."""
    return kernels.fused_attention(q, k, v, mask, words, rate, segments=segments)


def _kernel_fwd(q, k, v, mask, words, rate, segments):
    out = kernels.fused_attention(q, k, v, mask, words, rate, segments=segments)
    return out, (q, k, v, mask, words, out)


def _kernel_bwd(rate, segments, res, d_out):
    q, k, v, mask, words, out = res
    dq, dk, dv = kernels.fused_attention_bwd(
        q, k, v, mask, words, rate, out, d_out, segments=segments
    )
    return dq, dk, dv, *_no_grads(mask, words)


_kernel.defvjp(_kernel_fwd, _kernel_bwd)
