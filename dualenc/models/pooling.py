"""Token vectors → one vector per text, with exactly sentence-transformers' pooling math."""

from __future__ import annotations

import jax
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


def pool_segments(hidden, segment_ids, num_segments: int, kind: str, pooled=None):
    """Packed rows: (B, L, H) hidden + (B, L) segment ids (0 = padding) → (B, S, H) float32.

    Each of the S texts of a row is pooled as `pool` pools an unpacked text: 'cls' / 'pooler'
    take the text's first token, 'mean' / 'max' its tokens. Empty segments give zeros. One-hot
    contractions (exact 0/1 weights, highest precision) keep the sums equal to `pool`'s.
    """
    seg = segment_ids
    onehot = (seg[..., None] == jnp.arange(1, num_segments + 1)).astype(jnp.float32)  # (B, L, S)
    hidden = hidden.astype(jnp.float32)
    if kind in ("cls", "pooler"):
        if kind == "pooler":
            if pooled is None:
                raise ValueError("pooling 'pooler' needs a model with a pooling layer")
            hidden = pooled.astype(jnp.float32)  # (B, L, H): the pooler applied per token
        prev = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
        first = (seg != prev).astype(jnp.float32)[..., None]  # segments are contiguous
        return _contract(onehot * first, hidden)
    if kind == "mean":
        counts = jnp.sum(onehot, axis=1)[..., None]  # (B, S, 1)
        return _contract(onehot, hidden) / jnp.maximum(counts, 1e-9)
    if kind == "max":
        b, length, h = hidden.shape
        flat = (jnp.arange(b)[:, None] * (num_segments + 1) + seg).reshape(-1)
        out = jax.ops.segment_max(
            hidden.reshape(b * length, h), flat, num_segments=b * (num_segments + 1)
        )
        out = out.reshape(b, num_segments + 1, h)[:, 1:]
        return jnp.where(jnp.isfinite(out), out, 0.0)
    raise ValueError(f"unknown pooling {kind!r}; known: {list(POOLINGS)}")


def _contract(weights, hidden):
    """Σ_l weights[b, l, s] · hidden[b, l, h] → (B, S, H), in full float32."""
    return jnp.einsum("bls,blh->bsh", weights, hidden, precision=jax.lax.Precision.HIGHEST)


def l2_normalize(x, eps: float = 1e-12):
    """x / max(‖x‖₂, eps) over the last axis, like torch.nn.functional.normalize."""
    x = x.astype(jnp.float32)
    # max before sqrt: the same value, but a finite gradient at x = 0 (empty packed segments).
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))
    return x / norm
