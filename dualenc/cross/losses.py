"""Cross-encoder losses: pure functions of (logits, batch) -> (loss, metrics).

Logits come as (B, G, num_labels): G = 1 for pair classification / pointwise rows, G = 1 + k for
retrieval groups whose candidate 0 is the positive. `CROSS_LOSSES` maps a `cross.loss` name to
a builder taking the `cross` config.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, dict], tuple[jax.Array, dict]]


def _group_targets(logits: jax.Array, batch: dict) -> jax.Array:
    """(B, G) 0/1 relevance: `labels` (B,) for single pairs, else one-hot on candidate 0."""
    b, g = logits.shape[:2]
    if g == 1 and "labels" in batch:
        return batch["labels"].reshape(b, 1).astype(jnp.float32)
    return jnp.zeros((b, g), jnp.float32).at[:, 0].set(1.0)


def bce_loss(_cfg=None) -> LossFn:
    """Pointwise sigmoid cross-entropy of each pair's relevance logit, mean over pairs."""

    def fn(logits, batch):
        z = logits[..., 0].astype(jnp.float32)  # (B, G)
        y = _group_targets(logits, batch)
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(z, y))
        acc = jnp.mean(((z >= 0) == (y >= 0.5)).astype(jnp.float32))  # graded y: at 0.5
        return loss, {"accuracy": acc}

    return fn


def listwise_loss(_cfg=None) -> LossFn:
    """Softmax cross-entropy over each group's 1 + k logits, the positive at index 0."""

    def fn(logits, batch):
        z = logits[..., 0].astype(jnp.float32)  # (B, 1+k)
        loss = jnp.mean(-jax.nn.log_softmax(z, axis=-1)[:, 0])
        acc = jnp.mean((jnp.argmax(z, axis=-1) == 0).astype(jnp.float32))
        return loss, {"accuracy": acc}

    return fn


def pair_ce_loss(cfg=None) -> LossFn:
    """Class cross-entropy; with `class_weights` the weighted mean sum(w_y * ce) / sum(w_y)
    (as torch.nn.CrossEntropyLoss(weight=...)), so imbalanced classes can count alike."""
    weights = tuple(float(w) for w in (cfg.class_weights if cfg is not None else ()) or ())

    def fn(logits, batch):
        z = logits[:, 0, :].astype(jnp.float32)  # (B, K)
        y = batch["labels"].astype(jnp.int32)
        ce = optax.softmax_cross_entropy_with_integer_labels(z, y)
        w = jnp.asarray(weights, jnp.float32)[y] if weights else jnp.ones_like(ce)
        loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)
        acc = jnp.mean((jnp.argmax(z, axis=-1) == y).astype(jnp.float32))
        return loss, {"accuracy": acc}

    return fn


CROSS_LOSSES: dict[str, Callable[..., LossFn]] = {
    "bce": bce_loss,
    "listwise": listwise_loss,
    "pair_ce": pair_ce_loss,
}


def make_cross_loss(cfg) -> LossFn:
    """The loss named by `cfg.loss` (a key of CROSS_LOSSES)."""
    try:
        return CROSS_LOSSES[cfg.loss](cfg)
    except KeyError:
        raise ValueError(
            f"cross.loss={cfg.loss!r}; expected one of {sorted(CROSS_LOSSES)}"
        ) from None
