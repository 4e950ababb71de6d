"""Pure retrieval losses. Every loss returns `(loss, metrics dict)`; `loss_registry` names them.

Math is float32 whatever the encoder dtype: softmax over thousands of candidates and small
margins lose too much in bf16. Contrastive losses are written over the GLOBAL batch (big_vision
style): under `jax.jit` with batch-sharded inputs the compiler gathers the candidates, so every
query sees every device's positives and hard negatives. `contrastive_loss_sharded` is the explicit
`jax.shard_map` + `all_gather` variant for huge batches; tests prove the two agree.

Candidate order (both variants): all B positives first, then the B*k hard negatives query-major,
so the label of query i is column i. Interleaving (P N P N ...) silently points labels at
negatives -- the sentence-transformers gather bug (NOTES.md).

False negatives: with passage ids, a candidate column holding a positive of the row's query (the
same id as its sampled positive, or any id in its `q_pos_ids` row, -1 padded) is masked, except
the row's own label column. Multi-positive queries (SciFact) thus never push away their other
positives, whichever device holds them.
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
ERR_ALIASES = {"l2": "squared", "soft": "softplus"}  # the official code's names
MARGIN_TARGETS = ("adaptive", "static")


def _replicate_if_explicit(x):
    """On a mesh with Explicit axes, reshard candidates to replicated (the all-gather that jit
    inserts by itself on Auto axes); otherwise `q @ cand.T` would be an illegal sharding."""
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return x
    return jax.sharding.reshard(x, P())


def _flat_candidates(x):
    """(B, 1+k, ...) -> (B+B*k, ...): all column-0 entries, then the rest query-major."""
    b, n = x.shape[:2]
    return jnp.concatenate([x[:, 0], x[:, 1:].reshape(b * (n - 1), *x.shape[2:])], axis=0)


def _candidates(p, p_ids):
    """p (B,1+k,D) -> (cand (B+B*k, D), cand_ids (B+B*k,) | None): positives, then negatives."""
    cand = _replicate_if_explicit(_flat_candidates(p))
    if p_ids is None:
        return cand, None
    return cand, _replicate_if_explicit(_flat_candidates(p_ids))


def _is_positive(cand_ids, pos_ids, q_pos_ids):
    """(b, N) bool: column c holds a positive of row i's query: cand_ids[c] == pos_ids[i] or
    cand_ids[c] in q_pos_ids[i] (b, P), -1 = padding. A loop over P keeps memory at (b, N)."""
    hit = cand_ids[None, :] == pos_ids[:, None]
    if q_pos_ids is None or q_pos_ids.shape[-1] == 0:
        return hit

    def body(j, acc):
        col = jax.lax.dynamic_index_in_dim(q_pos_ids, j, axis=1)  # (b, 1)
        return acc | ((cand_ids[None, :] == col) & (col >= 0))

    return jax.lax.fori_loop(0, q_pos_ids.shape[-1], body, hit)


def _false_negatives(cand_ids, pos_ids, q_pos_ids, is_label, mask):
    """Columns to drop: positives of the row's query other than its label column."""
    if not mask or cand_ids is None:
        return jnp.zeros_like(is_label)
    return _is_positive(cand_ids, pos_ids, q_pos_ids) & ~is_label


def _row_terms(q, cand, labels, pos_ids, cand_ids, scale, mask, q_pos_ids=None):
    """Per-query terms for rows `q` (b,D) against all candidates (N,D).

    Returns (masked logits (b,N), per-row CE (b,), correct (b,), pos score (b,), hardest negative
    score (b,), has-negative (b,)). Scores are the raw (unscaled) similarities.
    """
    sims = q @ cand.T  # (b, N)
    cols = jnp.arange(cand.shape[0])
    is_label = cols[None, :] == labels[:, None]  # (b, N)
    drop = _false_negatives(cand_ids, pos_ids, q_pos_ids, is_label, mask)
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
    q,
    p,
    p_ids=None,
    *,
    scale: float = 20.0,
    symmetric: bool = False,
    mask_duplicates: bool = True,
    q_pos_ids=None,
):
    """In-batch + hard-negative softmax (MNRL / InfoNCE / DPR) over the global batch.

    q (B,D), p (B,1+k,D) with p[:,0] the positive, p_ids (B,1+k) int passage ids (equal text =>
    equal id) or None, q_pos_ids (B,P) all positive ids of each row's query (-1 padded) or None.
    logits = scale * q @ cand.T (B, B+B*k), labels arange(B). With `mask_duplicates`, non-label
    columns holding a positive of the row's query get -inf (false negatives). `symmetric` averages
    in the passage->query softmax over the positives (ST's MultipleNegativesSymmetricRankingLoss).
    Metrics: loss, accuracy, pos_score, hardest_neg_score (raw similarities, not scaled).
    """
    q, p = q.astype(jnp.float32), p.astype(jnp.float32)
    b = q.shape[0]
    cand, cand_ids = _candidates(p, p_ids)
    pos_ids = None if p_ids is None else p_ids[:, 0]
    labels = jnp.arange(b)
    logits, ce, correct, pos, hard, has_neg = _row_terms(
        q, cand, labels, pos_ids, cand_ids, scale, mask_duplicates, q_pos_ids
    )
    loss = jnp.mean(ce)
    if symmetric:
        # Passage i vs all queries: the transpose of the positive block. back[i, j] is masked iff
        # passage i is a positive of query j: then query j is no negative for passage i.
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
    q_pos_ids=None,
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
        mask_duplicates, q_pos_ids = False, None
    else:
        ids = p_ids
    extra = () if q_pos_ids is None else (q_pos_ids,)

    def local(q_l, p_l, ids_l, *rest):
        qpos_l = rest[0] if rest else None
        q_l, p_l = q_l.astype(jnp.float32), p_l.astype(jnp.float32)
        b = q_l.shape[0]
        gather = lambda x: jax.lax.all_gather(x, axes, tiled=True)  # noqa: E731
        cand = jnp.concatenate([gather(p_l[:, 0]), gather(_flat_candidates(p_l)[b:])])
        cand_ids = jnp.concatenate([gather(ids_l[:, 0]), gather(_flat_candidates(ids_l)[b:])])
        labels = jax.lax.axis_index(axes) * b + jnp.arange(b)
        logits, ce, correct, pos, hard, has_neg = _row_terms(
            q_l, cand, labels, ids_l[:, 0], cand_ids, scale, mask_duplicates, qpos_l
        )
        total_b = b * jax.lax.axis_size(axes)
        loss = jax.lax.psum(ce.sum(), axes) / total_b
        if symmetric:
            ce_back = _sym_local_ce(
                q_l, p_l[:, 0], ids_l[:, 0], qpos_l, labels, gather, scale, mask_duplicates
            )
            loss = 0.5 * (loss + jax.lax.psum(ce_back.sum(), axes) / total_b)
        sums = [
            jax.lax.psum(x.astype(jnp.float32).sum(), axes) for x in (correct, pos, hard, has_neg)
        ]
        return loss, _metrics(loss, *sums, total_b)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * (3 + len(extra)), out_specs=P())(
        q, p, ids, *extra
    )


def _sym_local_ce(q_l, pos_l, pos_ids_l, qpos_l, labels, gather, scale, mask):
    """Per-row passage->query CE of this shard's positives (b,D) against all queries: query j
    is dropped for passage i when passage i is a positive of query j (not the label)."""
    q_all = gather(q_l)  # (B, D)
    back = scale * (pos_l @ q_all.T)  # (b, B)
    is_label = jnp.arange(q_all.shape[0])[None, :] == labels[:, None]
    if mask:
        # (B, b): [j, i] = passage i is a positive of query j.
        qpos_all = None if qpos_l is None else gather(qpos_l)
        hit = _is_positive(pos_ids_l, gather(pos_ids_l), qpos_all)
        back = jnp.where(hit.T & ~is_label, _NEG_INF, back)
    return jax.nn.logsumexp(back, axis=-1) - jnp.sum(jnp.where(is_label, back, 0.0), axis=-1)


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


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _err(x, err: str):
    if err == "squared":
        return jnp.square(x)
    if err == "l1":
        return jnp.abs(x)
    return jax.nn.softplus(-x)


def _check_err(err: str) -> str:
    err = ERR_ALIASES.get(err, err)
    if err not in ERRS:
        raise ValueError(f"err must be one of {ERRS}, got {err!r}")
    return err


def adaptive_margin_loss(
    q,
    p_pos,
    p_neg=None,
    *,
    err: str = "squared",
    target: str = "adaptive",
    static_margin: float = 0.5,
    stop_gradient: bool = False,
    in_batch: bool = False,
    p_ids=None,
    q_pos_ids=None,
    mask_duplicates: bool = True,
):
    """Adaptive relevance margins (Gienapp et al., ICTIR 2025), as in the official code.

    Cosine s; margin m = s(q,d+) - s(q,d-); target t = s(d+,d-)/2 + 1/2 (`target='adaptive'`,
    no stop-gradient unless `stop_gradient`) or t = `static_margin` (`target='static'`: a
    fixed-margin variant); loss = mean err(m - t) with err squared | l1 | softplus (the
    code's 'l2' | 'l1' | 'soft', 'soft' being softplus(t - m)). Call as (q (B,D), p_pos (B,D),
    p_neg (B,D) or (B,k,D)), or (q, p (B,1+k,D)) with the pipeline's layout (p[:,0] positive).
    Pairs: each (query, own hard negative) once; `in_batch`: every other passage of the global
    batch. With ids, pairs whose negative is a positive of the query are left out.

    In-batch form vs the authors' code (webis-de/adaptive-relevance-margin-loss, src/loss.py):
    there `margin = pos.diag() - neg` broadcasts the (B,) positive scores along the LAST axis of
    the (B, B) negative scores, so entry (i, j) is s(q_j, d+_j) - s(q_i, d-_j): the positive
    term belongs to query j, the negative to query i, while its target s(d+_i, d-_j)/2 + 1/2
    belongs to row i. We implement the intended per-query form, m_ij = s(q_i, d+_i) -
    s(q_i, c_j), t_ij = s(d+_i, c_j)/2 + 1/2, over every candidate c_j of the global batch
    (other rows' positives and all hard negatives, across devices; theirs: the B hard negatives
    only), minus the row's own positive and, with ids, any positive of its query.
    """
    err = _check_err(err)
    if target not in MARGIN_TARGETS:
        raise ValueError(f"target must be one of {MARGIN_TARGETS}, got {target!r}")
    if p_neg is None:
        if p_pos.ndim != 3 or (p_pos.shape[1] < 2 and not in_batch):
            raise ValueError(
                f"adaptive_margin_loss needs p (B, 1+k, D) with k >= 1 hard "
                f"negatives, got shape {p_pos.shape}"
            )
        p_all = p_pos.astype(jnp.float32)
        p_pos, p_neg = p_all[:, 0], p_all[:, 1:]
    else:
        if in_batch or p_ids is not None:
            raise ValueError("in_batch / p_ids need the pipeline layout p (B, 1+k, D)")
        p_all = None
    q, p_pos, p_neg = (x.astype(jnp.float32) for x in (q, p_pos, p_neg))
    if in_batch:
        margin, tgt, valid = _am_in_batch(q, p_all, p_ids, q_pos_ids, mask_duplicates)
    else:
        if p_neg.ndim == 3:
            q, p_pos = q[:, None], p_pos[:, None]  # broadcast over the k negatives
        margin = _cos(q, p_pos) - _cos(q, p_neg)
        tgt = _cos(p_pos, p_neg) / 2 + 0.5
        valid = jnp.ones(margin.shape, bool)
        if p_ids is not None and mask_duplicates:
            pos, negs = p_ids[:, 0], p_ids[:, 1:]  # (B,), (B,k)
            hit = jax.vmap(lambda n, ps, qp: _is_positive(n, ps[None], qp[None])[0])(
                negs, pos, q_pos_ids if q_pos_ids is not None else jnp.full((len(pos), 0), -1)
            )
            valid = ~hit
    if target == "static":
        tgt = jnp.full_like(margin, float(static_margin))
    elif stop_gradient:
        tgt = jax.lax.stop_gradient(tgt)
    w = valid.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    mean = lambda x: jnp.sum(w * x) / n  # noqa: E731
    loss = mean(_err(margin - tgt, err))
    return loss, {
        "loss": loss,
        "margin": mean(margin),
        "target": mean(tgt),
        "accuracy": mean((margin > 0).astype(jnp.float32)),
    }


def _am_in_batch(q, p, p_ids, q_pos_ids, mask):
    """(margin, target, valid) (B, B+B*k): query i against every candidate but its label and the
    positives of its query."""
    b = q.shape[0]
    cand, cand_ids = _candidates(_unit(p), p_ids)
    qn, posn = _unit(q), _unit(p[:, 0])
    margin = jnp.sum(qn * posn, axis=-1)[:, None] - qn @ cand.T
    tgt = (posn @ cand.T) / 2 + 0.5
    is_label = jnp.arange(cand.shape[0])[None, :] == jnp.arange(b)[:, None]
    pos_ids = None if p_ids is None else p_ids[:, 0]
    drop = _false_negatives(cand_ids, pos_ids, q_pos_ids, is_label, mask)
    return margin, tgt, ~(drop | is_label)
