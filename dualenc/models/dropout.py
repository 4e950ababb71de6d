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


def hash_bits(key, shape) -> jax.Array:
    """uint32 bits of `shape` from `key`, one per element of the flat index."""
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 2**32:
        raise ValueError(f"dropout over {size} elements: the uint32 index would wrap")
    return hash_index(key_words(key), jax.lax.iota(jnp.uint32, size).reshape(shape))


def threshold_int(rate: float) -> int:
    """Bits ≥ this are kept: probability 1 - rate (to 2⁻³²)."""
    return min(int(round(float(rate) * 2.0**32)), 2**32 - 1)


def threshold(rate: float) -> jax.Array:
    return jnp.uint32(threshold_int(rate))


def keep_mask(key, rate: float, shape) -> jax.Array:
    """bool mask, True with probability 1 - rate (to 2⁻³²)."""
    return hash_bits(key, shape) >= threshold(rate)


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
