"""Token vectors → one vector per text, with exactly sentence-transformers' pooling math."""

from __future__ import annotations

import jax.numpy as jnp

POOLINGS = ("cls", "mean", "max", "pooler")


def pool(hidden, attention_mask, kind: str, pooled=None):
    """(B, L, H) hidden + (B, L) mask → (B, H) float32.

    'cls': first token; 'mean': average over unpadded tokens (sum / max(count, 1e-9), as
    sentence-transformers); 'max': max over unpadded tokens; 'pooler': the model's tanh pooler.
    """
    if kind == "cls":
        return hidden[:, 0].astype(jnp.float32)
    if kind == "pooler":
        if pooled is None:
            raise ValueError("pooling 'pooler' needs a model with a pooling layer (pooled is None)")
        return pooled.astype(jnp.float32)
    mask = attention_mask.astype(jnp.float32)[..., None]  # (B, L, 1)
    hidden = hidden.astype(jnp.float32)
    if kind == "mean":
        total = jnp.sum(hidden * mask, axis=1)  # (B, H)
        return total / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    if kind == "max":
        return jnp.max(jnp.where(mask > 0, hidden, -1e9), axis=1)  # as sentence-transformers
    raise ValueError(f"unknown pooling {kind!r}; known: {list(POOLINGS)}")


def l2_normalize(x, eps: float = 1e-12):
    """x / max(‖x‖₂, eps) over the last axis, like torch.nn.functional.normalize."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)
