"""Dropout whose keep mask comes from a counter-based integer hash instead of `jax.random`.

Why: XLA:CPU generates random bits at ~15 ns per element (threefry, or the RngBitGenerator behind
`unsafe_rbg`), which made dropout the largest non-matmul cost of a training step — the attention
probabilities alone are B x N x L x L elements per layer (benchmarks/README.md). Dropout needs
independent-looking masks at the right rate, not cryptographic bits: the element's flat index,
keyed by two words drawn from the module's dropout key (`make_rng`, so keys still differ per layer,
step and host exactly as with `nn.Dropout`), goes through two rounds of a 32-bit avalanche hash
(Wellons' "lowbias32"), ~40x cheaper here. An element is kept when its hash ≥ round(rate · 2³²),
so the drop rate is exact to 2⁻³², and kept values are scaled by 1 / (1 - rate) as in PyTorch.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _mix(x):
    """lowbias32: a bijective uint32 → uint32 hash with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def key_words(key) -> jax.Array:
    """The two uint32 words (k0, k1) that key the hash."""
    return jax.random.bits(key, (2,), jnp.uint32)


def hash_index(words, index) -> jax.Array:
    """hash(hash(index ^ k0) + k1): uint32 bits for uint32 element indices."""
    return _mix(_mix(index ^ words[0]) + words[1])


WRAP = 2**32  # uint32 indices: a flat index past this would wrap and repeat masks
BLOCK_MIX = 0x9E3779B9  # odd (golden ratio): spreads block numbers over the uint32 range


def hash_index_blocks(words, index, block) -> jax.Array:
    """hash(hash(index ^ k0) + k1 + block * BLOCK_MIX): for tensors past `WRAP` elements,
    `index` within a block and `block` its number. Block 0 gives `hash_index` exactly."""
    return _mix(_mix(index ^ words[0]) + words[1] + block * jnp.uint32(BLOCK_MIX))


def hash_bits(key, shape, wrap: int = WRAP) -> jax.Array:
    """uint32 bits of `shape` from `key`, one per element of the flat index. Past `wrap`
    elements (pod-sized global batches) the trailing dims whose size stays under `wrap` index
    within a block and the leading dims number the blocks, so no index wraps; smaller tensors
    keep the plain flat-index hash (the masks of every run so far)."""
    words = key_words(key)
    size = int(np.prod(shape, dtype=np.int64))
    if size < wrap:
        return hash_index(words, jax.lax.iota(jnp.uint32, size).reshape(shape))
    k = len(shape)
    while k > 0 and int(np.prod(shape[k - 1 :], dtype=np.int64)) < wrap:
        k -= 1
    outer, inner = shape[:k], shape[k:]
    if not inner or int(np.prod(outer, dtype=np.int64)) >= wrap:
        raise ValueError(f"dropout over {shape}: no split of the index fits uint32")
    n_in, n_out = int(np.prod(inner, dtype=np.int64)), int(np.prod(outer, dtype=np.int64))
    index = jax.lax.iota(jnp.uint32, n_in).reshape((1,) * len(outer) + tuple(inner))
    block = jax.lax.iota(jnp.uint32, n_out).reshape(tuple(outer) + (1,) * len(inner))
    return hash_index_blocks(words, index, block)


def threshold_int(rate: float) -> int:
    """Bits ≥ this are kept: probability 1 - rate (to 2⁻³²)."""
    return min(int(round(float(rate) * 2.0**32)), 2**32 - 1)


def threshold(rate: float) -> jax.Array:
    return jnp.uint32(threshold_int(rate))


def keep_mask(key, rate: float, shape, wrap: int = WRAP) -> jax.Array:
    """bool mask, True with probability 1 - rate (to 2⁻³²)."""
    return hash_bits(key, shape, wrap) >= threshold(rate)


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout(rate)(x, deterministic=...)`, same 'dropout' rng collection."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)).astype(x.dtype)

    def words(self) -> jax.Array:
        """The hash key words this module's __call__ would use, for kernels that index the mask
        themselves (`attention.py`): same rng stream, so the same mask."""
        return key_words(self.make_rng("dropout"))
