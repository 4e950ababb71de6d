"""Pure retrieval losses. Every loss returns `(loss scalar, metrics dict of scalars)`.

Math is float32 whatever the encoder dtype: softmax over thousands of candidates and small
margins lose too much in bf16. Contrastive losses are written over the GLOBAL batch (big_vision
style): under `jax.jit` with batch-sharded inputs the compiler gathers the candidates, so every
query sees every device's positives and hard negatives. `contrastive_loss_sharded` is the explicit
`jax.shard_map` + `all_gather` variant for huge batches; tests prove the two agree.

Candidate order (both variants): all B positives first, then the B*k hard negatives query-major,
so the label of query i is column i. Interleaving (P N P N ...) silently points labels at
negatives -- the sentence-transformers gather bug (NOTES.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

_NEG_INF = -jnp.inf
ERRS = ("squared", "l1", "softplus")
_ERR_ALIASES = {"l2": "squared", "soft": "softplus"}  # the official code's names


def _replicate_if_explicit(x):
    """On a mesh with Explicit axes, reshard candidates to replicated (the all-gather that jit
    inserts by itself on Auto axes); otherwise `q @ cand.T` would be an illegal sharding."""
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return x
    return jax.sharding.reshard(x, P())


def _candidates(p, p_ids):
    """p (B,1+k,D) -> (cand (B+B*k, D), cand_ids (B+B*k,) | None): positives, then negatives."""
    b, n, d = p.shape
    cand = jnp.concatenate([p[:, 0], p[:, 1:].reshape(b * (n - 1), d)], axis=0)
    if p_ids is None:
        return _replicate_if_explicit(cand), None
    ids = jnp.concatenate([p_ids[:, 0], p_ids[:, 1:].reshape(b * (n - 1))], axis=0)
    return _replicate_if_explicit(cand), _replicate_if_explicit(ids)


def _row_terms(q, cand, labels, pos_ids, cand_ids, scale, mask):
    """Per-query terms for rows `q` (b,D) against all candidates (N,D).

    Returns (masked logits (b,N), per-row CE (b,), correct (b,), pos score (b,), hardest negative
    score (b,), has-negative (b,)). Scores are the raw (unscaled) similarities.
    """
    sims = q @ cand.T  # (b, N)
    cols = jnp.arange(cand.shape[0])
    is_label = cols[None, :] == labels[:, None]  # (b, N)
    drop = jnp.zeros_like(is_label)
    if mask and cand_ids is not None:
        # A column holding the query's own positive passage (other than the label column) is a
        # false negative: a duplicate positive in the batch or a mined negative equal to it.
        drop = (cand_ids[None, :] == pos_ids[:, None]) & ~is_label
    logits = jnp.where(drop, _NEG_INF, scale * sims)
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    pos = jnp.sum(jnp.where(is_label, sims, 0.0), axis=-1)
    neg_ok = ~(drop | is_label)
    hardest = jnp.max(jnp.where(neg_ok, sims, _NEG_INF), axis=-1)
    has_neg = jnp.any(neg_ok, axis=-1)
    return logits, ce, correct, pos, jnp.where(has_neg, hardest, 0.0), has_neg


def _metrics(loss, correct_sum, pos_sum, hard_sum, has_neg_sum, n):
    return {
        "loss": loss,
        "accuracy": correct_sum / n,
        "pos_score": pos_sum / n,
        "hardest_neg_score": hard_sum / jnp.maximum(has_neg_sum, 1.0),
    }


def contrastive_loss(
    q, p, p_ids=None, *, scale: float = 20.0, symmetric: bool = False, mask_duplicates: bool = True
):
    """In-batch + hard-negative softmax (MNRL / DPR) over the global batch.

    q (B,D), p (B,1+k,D) with p[:,0] the positive, p_ids (B,1+k) int passage ids (equal text =>
    equal id) or None. logits = scale * q @ cand.T (B, B+B*k), labels arange(B). With
    `mask_duplicates`, non-label columns whose id equals the query's positive id get -inf (false
    negatives). `symmetric` averages in the passage->query softmax over the positives (ST's
    MultipleNegativesSymmetricRankingLoss). Metrics: loss, accuracy, pos_score, hardest_neg_score
    (raw similarities, not scaled).
    """
    q, p = q.astype(jnp.float32), p.astype(jnp.float32)
    b = q.shape[0]
    cand, cand_ids = _candidates(p, p_ids)
    pos_ids = None if p_ids is None else p_ids[:, 0]
    labels = jnp.arange(b)
    logits, ce, correct, pos, hard, has_neg = _row_terms(
        q, cand, labels, pos_ids, cand_ids, scale, mask_duplicates
    )
    loss = jnp.mean(ce)
    if symmetric:
        # Passage i vs all queries: the transpose of the positive block (the mask is symmetric).
        back = logits[:, :b].T  # (B, B)
        eye = labels[:, None] == labels[None, :]
        ce_back = jax.nn.logsumexp(back, axis=-1) - jnp.sum(jnp.where(eye, back, 0.0), axis=-1)
        loss = 0.5 * (loss + jnp.mean(ce_back))
    metrics = _metrics(
        loss, correct.sum(), pos.sum(), hard.sum(), has_neg.astype(jnp.float32).sum(), b
    )
    return loss, metrics


def contrastive_loss_sharded(
    q,
    p,
    p_ids=None,
    *,
    mesh: Mesh,
    axis_names: Sequence[str] = ("data", "fsdp"),
    scale: float = 20.0,
    symmetric: bool = False,
    mask_duplicates: bool = True,
):
    """`contrastive_loss` with hand-written collectives (`jax.shard_map`), for huge batches.

    The batch dim is split over `axis_names`; each shard all-gathers positives, then negatives
    (keeping the global all-positives-first order), scores only its own b = B/n queries (a
    (b, B+B*k) logit block instead of (B, B+B*k)), and offsets its labels by axis_index * b. The
    local CE sum is psum'd and divided by B once: no other collective, so value_and_grad taken
    outside is exact. Equal to `contrastive_loss` in value and gradient (tests).
    """
    axes = tuple(axis_names)
    spec = P(axes)
    n_shards = math.prod(mesh.shape[a] for a in axes)
    if q.shape[0] % n_shards:
        raise ValueError(
            f"global batch {q.shape[0]} is not divisible by the {n_shards} shards "
            f"of mesh axes {axes}"
        )
    if p_ids is None:
        ids = jnp.zeros(p.shape[:2], jnp.int32)
        mask_duplicates = False
    else:
        ids = p_ids

    def local(q_l, p_l, ids_l):
        q_l, p_l = q_l.astype(jnp.float32), p_l.astype(jnp.float32)
        b, n, d = p_l.shape
        gather = lambda x: jax.lax.all_gather(x, axes, tiled=True)  # noqa: E731
        cand = jnp.concatenate([gather(p_l[:, 0]), gather(p_l[:, 1:].reshape(b * (n - 1), d))])
        cand_ids = jnp.concatenate([gather(ids_l[:, 0]), gather(ids_l[:, 1:].reshape(-1))])
        labels = jax.lax.axis_index(axes) * b + jnp.arange(b)
        logits, ce, correct, pos, hard, has_neg = _row_terms(
            q_l, cand, labels, ids_l[:, 0], cand_ids, scale, mask_duplicates
        )
        total_b = b * jax.lax.axis_size(axes)
        loss = jax.lax.psum(ce.sum(), axes) / total_b
        if symmetric:
            ce_back = _sym_local_ce(
                q_l, p_l[:, 0], ids_l[:, 0], labels, gather, scale, mask_duplicates
            )
            loss = 0.5 * (loss + jax.lax.psum(ce_back.sum(), axes) / total_b)
        sums = [
            jax.lax.psum(x.astype(jnp.float32).sum(), axes) for x in (correct, pos, hard, has_neg)
        ]
        return loss, _metrics(loss, *sums, total_b)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=P())(q, p, ids)


def _sym_local_ce(q_l, pos_l, pos_ids_l, labels, gather, scale, mask):
    """Per-row passage->query CE of this shard's positives (b,D) against all queries."""
    q_all = gather(q_l)  # (B, D)
    back = scale * (pos_l @ q_all.T)  # (b, B)
    is_label = jnp.arange(q_all.shape[0])[None, :] == labels[:, None]
    if mask:
        drop = (gather(pos_ids_l)[None, :] == pos_ids_l[:, None]) & ~is_label
        back = jnp.where(drop, _NEG_INF, back)
    return jax.nn.logsumexp(back, axis=-1) - jnp.sum(jnp.where(is_label, back, 0.0), axis=-1)


def in_batch_accuracy(q, p, p_ids=None, *, mask_duplicates: bool = True):
    """Fraction of queries whose positive outscores every other candidate (same masking)."""
    return contrastive_loss(q, p, p_ids, scale=1.0, mask_duplicates=mask_duplicates)[1]["accuracy"]


def margin_mse_loss(q, p_pos, p_neg, teacher_pos, teacher_neg):
    """MarginMSE (Hofstaetter et al.; GPL): MSE between the student's dot-product margin
    q.p+ - q.p- and the teacher's (cross-encoder) margin. q, p_pos (B,D); p_neg (B,D) or
    (B,k,D) with teacher_neg (B,) or (B,k); teacher_pos (B,). Embeddings are used as given:
    normalise them first for a cosine student."""
    q, p_pos, p_neg = (x.astype(jnp.float32) for x in (q, p_pos, p_neg))
    s_pos = jnp.sum(q * p_pos, axis=-1)  # (B,)
    if p_neg.ndim == 3:
        s_neg = jnp.einsum("bd,bkd->bk", q, p_neg)
        s_pos, teacher_pos = s_pos[:, None], jnp.asarray(teacher_pos)[:, None]
    else:
        s_neg = jnp.sum(q * p_neg, axis=-1)
    student = s_pos - s_neg
    teacher = jnp.asarray(teacher_pos, jnp.float32) - jnp.asarray(teacher_neg, jnp.float32)
    loss = jnp.mean(jnp.square(student - teacher))
    return loss, {
        "loss": loss,
        "student_margin": jnp.mean(student),
        "teacher_margin": jnp.mean(teacher),
    }


def kl_distillation_loss(student_scores, teacher_scores, temperature: float = 1.0):
    """KL(teacher || student) of the softmaxes over candidates (B,N) at `temperature`, mean over
    queries, times T^2 so gradient magnitudes do not shrink as T grows (Hinton et al., 2015)."""
    t = float(temperature)
    s_logp = jax.nn.log_softmax(jnp.asarray(student_scores, jnp.float32) / t, axis=-1)
    t_logp = jax.nn.log_softmax(jnp.asarray(teacher_scores, jnp.float32) / t, axis=-1)
    kl = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)  # (B,)
    loss = jnp.mean(kl) * t * t
    return loss, {"loss": loss}


def _cos(a, b):
    """Row-wise cosine similarity over the last axis (eps guards zero vectors)."""
    na = jnp.linalg.norm(a, axis=-1)
    nb = jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(na * nb, 1e-8)


def adaptive_margin_loss(q, p_pos, p_neg=None, *, err: str = "squared"):
    """Adaptive relevance margins (Gienapp et al., ICTIR 2025), as in the official code.

    Cosine s; margin m = s(q,d+) - s(q,d-); target t = s(d+,d-)/2 + 1/2 (no stop-gradient);
    loss = mean err(m - t) with err squared | l1 | softplus (the code's 'l2' | 'l1' | 'soft',
    'soft' being log1p(exp(-x)), i.e. softplus(t - m): margins short of the target cost most).
    Call as (q (B,D), p_pos (B,D), p_neg (B,D) or (B,k,D)), or (q, p (B,1+k,D)) with the pipeline's
    layout (p[:,0] positive); every (query, negative) pair counts once.
    """
    err = _ERR_ALIASES.get(err, err)
    if err not in ERRS:
        raise ValueError(f"err must be one of {ERRS}, got {err!r}")
    if p_neg is None:
        if p_pos.ndim != 3 or p_pos.shape[1] < 2:
            raise ValueError(
                f"adaptive_margin_loss needs p (B, 1+k, D) with k >= 1 hard "
                f"negatives, got shape {p_pos.shape}"
            )
        p_pos, p_neg = p_pos[:, 0], p_pos[:, 1:]
    q, p_pos, p_neg = (x.astype(jnp.float32) for x in (q, p_pos, p_neg))
    if p_neg.ndim == 3:
        q, p_pos = q[:, None], p_pos[:, None]  # broadcast over the k negatives
    margin = _cos(q, p_pos) - _cos(q, p_neg)
    target = _cos(p_pos, p_neg) / 2 + 0.5
    x = margin - target
    if err == "squared":
        e = jnp.square(x)
    elif err == "l1":
        e = jnp.abs(x)
    else:
        e = jax.nn.softplus(-x)
    loss = jnp.mean(e)
    return loss, {
        "loss": loss,
        "margin": jnp.mean(margin),
        "target": jnp.mean(target),
        "accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
    }
