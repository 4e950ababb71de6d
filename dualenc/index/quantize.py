"""Compressed embedding formats (the sentence-transformers recipe): int8 codes with per-dimension
ranges calibrated on a sample, and sign bits packed 8 per byte; plus their first-stage scores.

int8 (`calibrate_int8`, `quantize_int8`): dimension j maps [min_j, max_j] of the calibration
sample onto the 256 codes -128..127, like `sentence_transformers.quantization.
quantize_embeddings(..., "int8", calibration_embeddings=...)`, except that values are rounded
(half the error of truncation) and clipped (a value outside the calibration range would wrap
around in a plain int8 cast). `dequantize_int8` maps a code back to the centre of its bucket.

binary (`pack_bits`): bit j is 1 where x_j > 0, packed big-endian (np.packbits), 1 bit per dim,
32x smaller than float32. On +-1 vectors, dot = D - 2 * Hamming distance, so `sign_scores`
ranks by Hamming distance with one matmul (exact: +-1 products and sums up to D are exact in
float32 and in TF32 / bf16 inputs with float32 accumulation).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

INT8_LEVELS = 255  # steps between the lowest and highest of the 256 codes


@dataclasses.dataclass(frozen=True)
class Int8Ranges:
    """Per-dimension calibration: code c of dim j stands for starts[j] + (c + 128) * steps[j]."""

    starts: np.ndarray  # (D,) float32: the calibration minimum of each dim
    steps: np.ndarray  # (D,) float32: (max - min) / 255, 1 where a dim is constant

    @property
    def nbytes(self) -> int:
        return int(self.starts.nbytes + self.steps.nbytes)


def calibration_sample(x: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Up to `size` rows of `x` drawn without replacement (seeded), in row order."""
    if size >= x.shape[0]:
        return x
    rows = np.random.default_rng(seed).choice(x.shape[0], size=size, replace=False)
    return x[np.sort(rows)]


def calibrate_int8(sample: np.ndarray) -> Int8Ranges:
    """Ranges from a (S, D) calibration sample: per-dimension min and max."""
    sample = np.asarray(sample, np.float32)
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError(f"calibration sample must be (S, D) with S > 0, got {sample.shape}")
    starts = sample.min(axis=0)
    steps = (sample.max(axis=0) - starts) / INT8_LEVELS
    steps = np.where(steps > 0, steps, 1.0).astype(np.float32)  # a constant dim: any step works
    return Int8Ranges(starts.astype(np.float32), steps)


def quantize_int8(x: np.ndarray, ranges: Int8Ranges) -> np.ndarray:
    """(N, D) float -> (N, D) int8 codes (rounded, clipped to the calibrated range)."""
    codes = np.rint((np.asarray(x, np.float32) - ranges.starts) / ranges.steps) - 128
    return np.clip(codes, -128, 127).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: Int8Ranges) -> np.ndarray:
    """(N, D) int8 codes -> (N, D) float32; error <= steps / 2 inside the calibrated range."""
    return (codes.astype(np.float32) + 128.0) * ranges.steps + ranges.starts


def pack_bits(x: np.ndarray) -> np.ndarray:
    """(N, D) float -> (N, ceil(D / 8)) uint8: bit j = x_j > 0 (np.packbits order)."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


def unpack_signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """(N, ceil(D / 8)) packed bits -> (N, D) float32 +-1 (host side, for rescoring)."""
    return np.unpackbits(bits, axis=-1, count=dim).astype(np.float32) * 2.0 - 1.0


def signs(x: np.ndarray) -> np.ndarray:
    """The +-1 float32 form of `pack_bits(x)`: the binary index's query format."""
    return np.where(np.asarray(x) > 0, 1.0, -1.0).astype(np.float32)


def int8_scores(q, p):
    """(Q, D) int8 x (C, D) int8 -> (Q, C) code dot products, accumulated in int32 (exact)."""
    dims = (((1,), (1,)), ((), ()))
    return jax.lax.dot_general(q, p, dims, preferred_element_type=jnp.int32)


def sign_scores(q, p_bits):
    """(Q, D) +-1 float x (C, ceil(D / 8)) packed bits -> (Q, C) = D - 2 * Hamming distance.
    The bits are unpacked chunk by chunk on device, so the index holds 1 bit per dim."""
    shifts = jnp.arange(7, -1, -1, dtype=jnp.uint8)  # np.packbits: first dim = high bit
    bits = (p_bits[:, :, None] >> shifts) & 1  # (C, W, 8)
    pm = bits.reshape(p_bits.shape[0], -1)[:, : q.shape[1]].astype(q.dtype) * 2 - 1  # (C, D)
    return jnp.dot(q, pm.T, preferred_element_type=jnp.float32)
