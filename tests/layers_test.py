"""dualenc's Dense / LayerNorm against flax's: same parameter trees, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualenc.models import layers


def _perturbed(params, seed=5):
    rng = np.random.default_rng(seed)  # away from the ones/zeros init, so scale/bias matter
    return jax.tree.map(
        lambda a: a + jnp.asarray(rng.standard_normal(a.shape).astype(np.float32)) * 0.3, params
    )


def _value_and_grads(mod, params, x):
    def loss(p, x):
        y = mod.apply(p, x).astype(jnp.float32)
        return jnp.sum(y * jnp.cos(y))  # a non-trivial dL/dy per element

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)


def _close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
        assert np.abs(u - v).max() <= rtol * max(np.abs(u).max(), 1.0), (u, v)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (layers.Dense(48), nn.Dense(48)),
        (layers.Dense(48, use_bias=False), nn.Dense(48, use_bias=False)),
        (layers.LayerNorm(epsilon=1e-12), nn.LayerNorm(epsilon=1e-12, use_fast_variance=False)),
    ],
)
def test_matches_flax_values_and_gradients(ours, theirs):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 70, 32)) * 2 + 0.5, jnp.float32)
    p_theirs = _perturbed(theirs.init(jax.random.key(0), x))
    p_ours = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
    assert jax.tree.map(jnp.shape, p_ours) == jax.tree.map(jnp.shape, p_theirs)
    np.testing.assert_allclose(ours.apply(p_theirs, x), theirs.apply(p_theirs, x), atol=2e-6)
    _close(_value_and_grads(ours, p_theirs, x), _value_and_grads(theirs, p_theirs, x), 1e-5)


def test_bfloat16_compute_float32_params():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 16, 32)), jnp.float32)
    for ours, theirs in (
        (layers.Dense(24, dtype=jnp.bfloat16), nn.Dense(24, dtype=jnp.bfloat16)),
        (
            layers.LayerNorm(dtype=jnp.bfloat16),
            nn.LayerNorm(dtype=jnp.bfloat16, use_fast_variance=False),
        ),
    ):
        p = _perturbed(theirs.init(jax.random.key(0), x))
        y = ours.apply(p, x)
        assert y.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(y, np.float32), np.asarray(theirs.apply(p, x), np.float32), atol=0.05
        )
        (_, (g_ours, _)), (_, (g_theirs, _)) = (
            _value_and_grads(ours, p, x),
            _value_and_grads(theirs, p, x),
        )
        assert jax.tree.map(lambda a: a.dtype, g_ours) == jax.tree.map(lambda a: a.dtype, p)
        _close(g_ours, g_theirs, 0.05)
