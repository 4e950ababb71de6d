"""Dense and LayerNorm with the parameter trees of `nn.Dense` / `nn.LayerNorm`, faster on XLA:CPU.

Why: XLA:CPU runs a reduction over the minor axis (the LayerNorm mean and variance over
features) and over many rows into a short vector (LayerNorm's scale/bias gradients) several times
slower than the same sums written as a matrix-vector product, which goes to the GEMM kernels:
LayerNorm forward + backward ~2.5x faster, the MNRL train step ~10 % (benchmarks/README.md). Those
sums are dots with a ones vector here: forward values agree with flax to float32 rounding (HF
parity stays ≤ 1e-5) and the gradients are the same sums, checked against flax in tests.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dualenc.models import kernels


def _row_sum(g):
    """Σ over every axis but the last, as ones · G (a GEMV, not a reduce)."""
    g2 = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((g2.shape[0],), g2.dtype)
    return jnp.dot(ones, g2, preferred_element_type=jnp.float32)


def _feature_mean(x):
    """Mean over the last axis as X · (1/H) (a GEMV), keepdims."""
    w = jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], x.dtype)
    return jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)


@jax.custom_vjp
def scale_shift(xhat, scale, bias):
    """xhat · scale + bias (LayerNorm's affine part); scale/bias gradients are GEMVs."""
    return xhat * scale + bias


def _scale_shift_fwd(xhat, scale, bias):
    return xhat * scale + bias, (xhat, scale)


def _scale_shift_bwd(res, g):
    xhat, scale = res
    return g * scale, _row_sum(g * xhat), _row_sum(g)


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


@jax.custom_vjp
def _native_dense(x, kernel, bias):
    """x · kernel + bias whose kernel and bias gradients come from `kernels.dense_grad`."""
    return jnp.dot(x, kernel) + bias


def _native_dense_fwd(x, kernel, bias):
    return jnp.dot(x, kernel) + bias, (x, kernel)


def _native_dense_bwd(res, g):
    x, kernel = res
    d_kernel, d_bias = kernels.dense_grad(x, g)
    return jnp.dot(g, kernel.T), d_kernel, d_bias


_native_dense.defvjp(_native_dense_fwd, _native_dense_bwd)


class Dense(nn.Module):
    """`nn.Dense` (params 'kernel' (in, out) and 'bias' (out,)).

    The input is flattened to (rows, in) first: XLA:CPU runs the weight gradient of a dot that
    contracts two batch-like axes, (B, L, in)ᵀ · (B, L, out), ~30 % slower than the same (B·L,
    in)ᵀ · (B·L, out) GEMM (a Dense forward + backward at 32 × 160 × 384 → 1536: 200 → 130–148 ms).
    Where the native kernels run (`kernels.usable`: f32, one CPU device) the kernel and bias
    gradients come from `kernels.dense_grad`, whose XᵀG runs at the plain GEMM rate and sums the
    bias gradient in the same pass (MNRL train step +20 %, benchmarks/README.md); the forward is
    XLA's dot with the bias add fused into it either way (a GEMV bias gradient in XLA measured
    15 % slower, as the bias add then no longer fused)."""

    features: int
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).astype(self.dtype)  # 2-D: see the class docstring
        kernel = kernel.astype(self.dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            bias = bias.astype(self.dtype)
        if kernels.usable(x2, kernel):
            zero = jnp.zeros((self.features,), kernel.dtype)  # its gradient is dropped
            y = _native_dense(x2, kernel, zero if bias is None else bias)
        else:
            y = jnp.dot(x2, kernel)
            y = y if bias is None else y + bias  # XLA fuses the add into the dot
        return y.reshape(*lead, self.features)


class LayerNorm(nn.Module):
    """`nn.LayerNorm(use_fast_variance=False)` over the last axis (params 'scale', 'bias').

    Two-pass statistics in float32 (the E[x²] - E[x]² form loses ~1e-6 against PyTorch), each a
    GEMV; the output is cast to `dtype` as flax does.
    """

    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (h,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (h,), self.param_dtype)
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        centred = x32 - _feature_mean(x32)
        var = _feature_mean(centred * centred)
        xhat = centred * jax.lax.rsqrt(var + self.epsilon)
        y = scale_shift(xhat, scale.astype(x32.dtype), bias.astype(x32.dtype))
        return y.astype(self.dtype)


# What a rematerialised layer keeps for the backward (`jax.checkpoint_policies`): 'full' keeps
# only the layer's input and recomputes the whole forward; 'dots' also keeps every matmul's output
# (recomputes the elementwise ops and softmax only); 'dots_no_batch' keeps the weight matmuls'
# outputs but not attention's batched q·k and p·v, the largest ones at long lengths.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_setting(remat: bool, policy: str) -> bool | str:
    """A model config's `remat` field from the train config's `model.remat` and
    `model.remat_policy`: False, or the policy name."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"model.remat_policy={policy!r}: one of {sorted(REMAT_POLICIES)}")
    return policy if remat else False


def maybe_remat(layer_cls, remat: bool | str, static_argnums: tuple[int, ...]):
    """`layer_cls` itself, or rematerialised under the policy `remat` names (True: 'full')."""
    if not remat:
        return layer_cls
    policy = REMAT_POLICIES["full" if remat is True else remat]
    return nn.remat(layer_cls, policy=policy, static_argnums=static_argnums)
