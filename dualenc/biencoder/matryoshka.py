"""Matryoshka representation learning (Kusupati et al., 2022; sentence-transformers'
MatryoshkaLoss): the loss of every truncated prefix of the embeddings, weighted and summed, so
the first d dims alone make a usable embedding (`dualenc.evaluate --truncate_dim d`).
With dims = (D,) it is the plain loss, value and gradient.

`loss.matryoshka_dims = (384, 256, 128, 64)` wraps whichever `loss.name` is configured: each
term sees q[..., :d] and p[..., :d], a prefix renormalised when the model normalises its embeddings
(the loss is a dot product there, so a prefix must be unit-norm again to stay cosine, as
sentence-transformers' cosine losses make it). Weights default to 1 (a plain sum).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp


def check_dims(dims: Sequence, weights: Sequence, embed_dim: int | None = None) -> None:
    """Raises ValueError naming `loss.matryoshka_dims` / `loss.matryoshka_weights` when the dims
    are not distinct positive integers (at most `embed_dim` when known) or the weights do not
    match them."""
    dims, weights = tuple(dims), tuple(weights)
    if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims):
        raise ValueError(f"loss.matryoshka_dims={dims} must be positive integers")
    if len(set(dims)) != len(dims):
        raise ValueError(f"loss.matryoshka_dims={dims} has a repeated dim")
    if weights and (len(weights) != len(dims) or any(float(w) < 0 for w in weights)):
        raise ValueError(
            f"loss.matryoshka_weights={weights} must be one weight >= 0 per dim of "
            f"loss.matryoshka_dims={dims} (or empty: all 1)"
        )
    if embed_dim is not None and dims and max(dims) > embed_dim:
        raise ValueError(
            f"loss.matryoshka_dims={dims}: {max(dims)} exceeds the model's {embed_dim}-dim "
            "embeddings"
        )


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def matryoshka_loss(
    loss_fn: Callable, dims: Sequence[int], weights: Sequence[float] = (), *, normalize: bool
) -> Callable:
    """`fn(q (B,D), p (B,1+k,D), batch) -> (sum_i w_i * loss_fn(q[:d_i], p[:d_i]), metrics)`.

    Metrics are the widest prefix's, plus `loss@d` for each dim and `loss` the weighted sum.
    """
    dims = tuple(int(d) for d in dims)
    weights = tuple(float(w) for w in weights) or (1.0,) * len(dims)
    check_dims(dims, weights)
    widest = max(dims)

    def fn(q, p, batch):
        if widest > q.shape[-1]:  # a slice would silently keep the whole vector
            raise ValueError(
                f"loss.matryoshka_dims={dims}: {widest} exceeds the {q.shape[-1]}-dim embeddings"
            )
        total, metrics, terms = 0.0, {}, {}
        for d, w in zip(dims, weights, strict=True):
            q_d, p_d = q[..., :d], p[..., :d]
            if normalize and d < q.shape[-1]:  # the full vector is the tower's own output
                q_d, p_d = _unit(q_d.astype(jnp.float32)), _unit(p_d.astype(jnp.float32))
            loss, m = loss_fn(q_d, p_d, batch)
            total = total + w * loss
            terms[f"loss@{d}"] = loss
            if d == widest:
                metrics = dict(m)
        return total, {**metrics, **terms, "loss": total}

    return fn
