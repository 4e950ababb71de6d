"""The bi-encoder losses by name (`loss.name`), their config checks, and the step's loss fn.

Kept apart from the loss math (`biencoder.losses`) so that the config checks (`training.config`)
and the step read one table: name -> builder(loss config) -> fn(q, p, batch) -> (loss, metrics).
`loss.matryoshka_dims` wraps any of them in `biencoder.matryoshka` (the loss of each prefix).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from dualenc.biencoder import losses, matryoshka


def _teacher(batch, name: str, p):
    """The batch's `teacher_scores` (B, 1+k) as float32, or a clear error at trace time."""
    if "teacher_scores" not in batch:
        raise ValueError(
            f"loss.name={name!r} distils teacher scores, but the batch has no 'teacher_scores': "
            "train on data that carries a score per candidate (e.g. sentence-transformers JSONL "
            "with scores), or choose loss.name='contrastive'"
        )
    t = jnp.asarray(batch["teacher_scores"], jnp.float32)
    if t.shape != p.shape[:2]:
        raise ValueError(f"teacher_scores shape {t.shape} != (B, 1+k) {p.shape[:2]}")
    return t


def _contrastive(lcfg):
    kw = dict(
        scale=float(lcfg.scale),
        symmetric=bool(lcfg.get("symmetric", False)),
        mask_duplicates=bool(lcfg.get("mask_duplicates", True)),
    )
    return lambda q, p, batch: losses.contrastive_loss(
        q, p, batch.get("p_ids"), q_pos_ids=batch.get("q_pos_ids"), **kw
    )


def _adaptive_margin(lcfg):
    kw = dict(
        err=str(lcfg.get("margin_err", "squared")),
        target=str(lcfg.get("margin_target", "adaptive")),
        static_margin=float(lcfg.get("static_margin", 0.5)),
        stop_gradient=bool(lcfg.get("margin_stop_gradient", False)),
        in_batch=bool(lcfg.get("margin_in_batch", False)),
        mask_duplicates=bool(lcfg.get("mask_duplicates", True)),
    )
    return lambda q, p, batch: losses.adaptive_margin_loss(
        q, p, p_ids=batch.get("p_ids"), q_pos_ids=batch.get("q_pos_ids"), **kw
    )


def _margin_mse(lcfg):
    def fn(q, p, batch):
        t = _teacher(batch, "margin_mse", p)
        return losses.margin_mse_loss(q, p[:, 0], p[:, 1:], t[:, 0], t[:, 1:])

    return fn


def _kl(lcfg):
    scale, tau = float(lcfg.scale), float(lcfg.get("temperature", 1.0))

    def fn(q, p, batch):
        t = _teacher(batch, "kl", p)
        student = jnp.einsum("bd,bnd->bn", q.astype(jnp.float32), p.astype(jnp.float32))
        loss, m = losses.kl_distillation_loss(scale * student, t / tau)
        acc = jnp.mean((jnp.argmax(student, -1) == jnp.argmax(t, -1)).astype(jnp.float32))
        return loss, {**m, "accuracy": acc}

    return fn


# name -> builder(loss_cfg) -> fn(q (B,D), p (B,1+k,D), batch) -> (loss, metrics)
LOSSES: dict[str, Callable] = {
    "contrastive": _contrastive,
    "adaptive_margin": _adaptive_margin,
    "margin_mse": _margin_mse,
    "kl": _kl,
}
DISTILLATION = ("margin_mse", "kl")  # need batch['teacher_scores']
_NEEDS_NEGATIVES = ("margin_mse", "kl")  # a margin / a listwise target needs k >= 1


def validate_loss_config(lcfg, num_negatives: int | None = None) -> None:
    """Raises ValueError naming the `loss.*` (or `data.num_negatives`) key that cannot work, so a
    bad loss config fails before any model is loaded."""
    name = lcfg.get("name", "")
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} must be one of {tuple(LOSSES)}")
    scale = float(lcfg.get("scale", 1.0))
    if scale <= 0:  # NaN passes on purpose: the trainer's non-finite-loss path handles it
        raise ValueError(f"loss.scale={scale} must be > 0 (it is 1 / temperature)")
    err = lcfg.get("margin_err", "squared")
    if losses.ERR_ALIASES.get(err, err) not in losses.ERRS:
        raise ValueError(f"loss.margin_err={err!r} must be one of {losses.ERRS}")
    target = lcfg.get("margin_target", "adaptive")
    if target not in losses.MARGIN_TARGETS:
        raise ValueError(f"loss.margin_target={target!r} must be one of {losses.MARGIN_TARGETS}")
    if float(lcfg.get("temperature", 1.0)) <= 0:
        raise ValueError(f"loss.temperature={lcfg.get('temperature')} must be > 0")
    matryoshka.check_dims(lcfg.get("matryoshka_dims", ()), lcfg.get("matryoshka_weights", ()))
    if lcfg.get("symmetric", False) and name != "contrastive":
        raise ValueError(
            f"loss.symmetric=True only applies to loss.name='contrastive', not {name!r}"
        )
    if num_negatives is None or int(num_negatives) >= 1:
        return
    if name in _NEEDS_NEGATIVES:
        raise ValueError(
            f"loss.name={name!r} (distillation) needs a teacher score per hard negative: set "
            f"data.num_negatives >= 1 (got {num_negatives})"
        )
    if name == "adaptive_margin" and not lcfg.get("margin_in_batch", False):
        raise ValueError(
            "loss.name='adaptive_margin' needs data.num_negatives >= 1 hard negatives, or "
            "loss.margin_in_batch=True"
        )


def make_loss(lcfg, *, normalize: bool = False) -> Callable:
    """`fn(q (B,D), p (B,1+k,D), batch) -> (loss, metrics)` for `loss.name` (validated). `batch`
    is the global batch dict: `p_ids`, `q_pos_ids` mask false negatives when present;
    distillation losses read `teacher_scores`. With `loss.matryoshka_dims`, the weighted sum of
    the loss over those prefixes, renormalised when the model `normalize`s its embeddings."""
    validate_loss_config(lcfg)
    fn = LOSSES[lcfg.name](lcfg)
    dims = tuple(lcfg.get("matryoshka_dims", ()))
    if not dims:
        return fn
    weights = tuple(lcfg.get("matryoshka_weights", ()))
    return matryoshka.matryoshka_loss(fn, dims, weights, normalize=normalize)
