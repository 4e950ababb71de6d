"""Hand-computed values and an independent numpy reference for dualenc.biencoder.losses."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualenc import sharding
from dualenc.biencoder import loss_registry, losses

E = math.e


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# q0=[1,0], q1=[0,1]; positives [1,0], [0,1]; negatives [0,2], [0,0]; scale 1.
# Correct candidates [p0+, p1+, p0-, p1-]: query 0 -> [1, 0, 0, 0], query 1 -> [0, 1, 2, 0].
Q2 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
P2 = np.array([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [0.0, 0.0]]], np.float32)
LOSS2 = 0.5 * ((_lse(1, 0, 0, 0) - 1) + (_lse(0, 1, 2, 0) - 1))
# Interleaved (P N P N) candidates [p0+, p0-, p1+, p1-]: query 1 -> [0, 2, 1, 0] and its label
# column 1 would hold p0- (score 2).
LOSS2_INTERLEAVED = 0.5 * ((_lse(1, 0, 0, 0) - 1) + (_lse(0, 2, 1, 0) - 2))


def _ref_loss_and_grads(q, p, p_ids, scale, mask):
    """Independent float64 numpy reference: loss, dL/dq, dL/dp (analytic softmax gradient)."""
    q, p = q.astype(np.float64), p.astype(np.float64)
    b, n, d = p.shape
    order = [(i, 0) for i in range(b)] + [(i, j) for i in range(b) for j in range(1, n)]
    cand = np.stack([p[i, j] for i, j in order])
    logits = scale * q @ cand.T
    if mask and p_ids is not None:
        cid = np.array([p_ids[i, j] for i, j in order])
        for i in range(b):
            for c in range(len(order)):
                if c != i and cid[c] == p_ids[i, 0]:
                    logits[i, c] = -np.inf
    m = logits.max(axis=1, keepdims=True)
    prob = np.exp(logits - m)
    prob /= prob.sum(axis=1, keepdims=True)
    loss = np.mean(-np.log(prob[np.arange(b), np.arange(b)]))
    dlog = (prob - np.eye(b, len(order))) / b
    dq = scale * dlog @ cand
    dcand = scale * dlog.T @ q
    dp = np.zeros_like(p)
    for c, (i, j) in enumerate(order):
        dp[i, j] += dcand[c]
    return loss, dq, dp


def test_contrastive_accuracy_metric():
    """The loss's `accuracy`: the share of queries whose positive outscores every candidate."""
    q = jnp.eye(3)
    p = jnp.stack([jnp.eye(3), jnp.roll(jnp.eye(3), 1, axis=0)], axis=1)  # (3, 2, 3)
    assert float(losses.contrastive_loss(q, p, scale=1.0)[1]["accuracy"]) == 1.0
    p = p.at[2, 1].set(jnp.array([0.0, 0.0, 5.0]))  # a negative beats query 2's positive
    acc = losses.contrastive_loss(q, p, scale=1.0)[1]["accuracy"]
    np.testing.assert_allclose(float(acc), 2 / 3, rtol=1e-6)


def test_contrastive_hand_value_and_candidate_order():
    loss, m = losses.contrastive_loss(jnp.asarray(Q2), jnp.asarray(P2), scale=1.0)
    assert abs(LOSS2 - LOSS2_INTERLEAVED) > 0.4  # the data tells the two orders apart
    np.testing.assert_allclose(float(loss), LOSS2, rtol=1e-6)
    assert float(m["loss"]) == float(loss)
    np.testing.assert_allclose(float(m["accuracy"]), 0.5)  # query 1's negative p0- wins
    np.testing.assert_allclose(float(m["pos_score"]), 1.0)
    np.testing.assert_allclose(float(m["hardest_neg_score"]), 0.5 * (0 + 2))


def test_contrastive_scale():
    loss, _ = losses.contrastive_loss(jnp.asarray(Q2), jnp.asarray(P2), scale=2.0)
    want = 0.5 * ((_lse(2, 0, 0, 0) - 2) + (_lse(0, 2, 4, 0) - 2))
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


def test_contrastive_grads_match_numpy_reference():
    r = np.random.default_rng(0)
    q = r.normal(size=(4, 3)).astype(np.float32)
    p = r.normal(size=(4, 3, 3)).astype(np.float32)
    ids = np.array([[0, 5, 6], [0, 7, 1], [2, 8, 2], [3, 9, 10]], np.int32)  # dupes + mined==pos
    for mask in (False, True):
        ref, dq, dp = _ref_loss_and_grads(q, p, ids, 3.0, mask)
        f = functools.partial(losses.contrastive_loss, p_ids=ids, scale=3.0, mask_duplicates=mask)
        f = jax.jit(jax.value_and_grad(lambda q, p, f=f: f(q, p)[0], argnums=(0, 1)))
        loss, (gq, gp) = f(q, p)
        np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(gq), dq, atol=1e-5)
        np.testing.assert_allclose(np.asarray(gp), dp, atol=1e-5)
        assert np.isfinite(np.asarray(gp)).all()


def test_duplicate_masking_equals_column_removed():
    r = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    p = unit(r.normal(size=(3, 2, 4))).astype(np.float32)
    p[1, 0] = p[0, 0]  # queries 0 and 1 share a positive text
    p[2, 1] = p[2, 0]  # a mined negative equal to query 2's positive
    q = unit(p[:, 0] + 0.3 * r.normal(size=(3, 4))).astype(np.float32)  # near their positives
    ids = np.array([[7, 10], [7, 11], [9, 9]], np.int32)
    loss, _ = losses.contrastive_loss(jnp.asarray(q), jnp.asarray(p), jnp.asarray(ids), scale=4.0)
    unmasked, _ = losses.contrastive_loss(
        jnp.asarray(q), jnp.asarray(p), jnp.asarray(ids), scale=4.0, mask_duplicates=False
    )
    cand = np.concatenate([p[:, 0], p[:, 1]]).astype(np.float64)  # columns 0..5
    keep = {0: [0, 2, 3, 4, 5], 1: [1, 0, 2, 3, 4, 5], 2: [2, 0, 1, 3, 4]}
    keep[1].remove(0)  # column 0 (the shared positive) is a false negative for query 1
    ce = []
    for i, cols in keep.items():
        logits = 4.0 * cand[cols] @ q[i].astype(np.float64)
        ce.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0])
    np.testing.assert_allclose(float(loss), np.mean(ce), rtol=1e-5)
    assert float(unmasked) > float(loss) + 0.3  # about log 2 per duplicated row
    # Without ids nothing is masked.
    none, _ = losses.contrastive_loss(jnp.asarray(q), jnp.asarray(p), None, scale=4.0)
    np.testing.assert_allclose(float(none), float(unmasked), rtol=1e-6)


def test_symmetric_hand_value():
    loss, _ = losses.contrastive_loss(jnp.asarray(Q2), jnp.asarray(P2), scale=1.0, symmetric=True)
    # passage->query over positives: p0+=[1,0] -> [1, 0] (label 0), p1+=[0,1] -> [0, 1] (label 1)
    back = 0.5 * ((_lse(1, 0) - 1) + (_lse(0, 1) - 1))
    np.testing.assert_allclose(float(loss), 0.5 * (LOSS2 + back), rtol=1e-6)


def test_sharded_label_offsets_and_order_hand_value():
    """Two shards of one query each: without the axis_index offset query 1's label would be
    column 0; with per-shard interleaved gathering the order would be P N P N."""
    mesh = sharding.make_mesh((2, 1), devices=jax.devices()[:2])
    for sym, want in ((False, LOSS2), (True, None)):
        loss, m = jax.jit(
            lambda q, p, s=sym: losses.contrastive_loss_sharded(
                q, p, None, mesh=mesh, scale=1.0, symmetric=s
            )
        )(jnp.asarray(Q2), jnp.asarray(P2))
        if want is None:
            want = float(
                losses.contrastive_loss(
                    jnp.asarray(Q2), jnp.asarray(P2), scale=1.0, symmetric=True
                )[0]
            )
        np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    no_offset = 0.5 * ((_lse(1, 0, 0, 0) - 1) + (_lse(0, 1, 2, 0) - 0))  # query 1 -> column 0
    assert abs(no_offset - LOSS2) > 0.4 and abs(LOSS2_INTERLEAVED - LOSS2) > 0.4
    np.testing.assert_allclose(float(m["accuracy"]), 0.5)


def test_sharded_rejects_indivisible_batch():
    mesh = sharding.make_mesh((4, 2))
    with pytest.raises(ValueError, match="not divisible"):
        losses.contrastive_loss_sharded(jnp.zeros((4, 2)), jnp.zeros((4, 2, 2)), None, mesh=mesh)


def test_margin_mse_hand_values():
    q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    p_pos = jnp.array([[2.0, 0.0], [0.0, 3.0]])  # student pos scores 2, 3
    p_neg = jnp.array([[1.0, 1.0], [0.0, -1.0]])  # student neg scores 1, -1 -> margins 1, 4
    loss, m = losses.margin_mse_loss(q, p_pos, p_neg, jnp.array([5.0, 1.0]), jnp.array([3.0, 0.0]))
    np.testing.assert_allclose(float(loss), ((1 - 2) ** 2 + (4 - 1) ** 2) / 2)  # 5.0
    np.testing.assert_allclose(float(m["teacher_margin"]), 1.5)
    # k=2 negatives per query: (B, k, D) with teacher_neg (B, k).
    p_neg2 = jnp.stack([p_neg, jnp.zeros_like(p_neg)], axis=1)
    t_neg2 = jnp.array([[3.0, 2.0], [0.0, 1.0]])
    loss2, _ = losses.margin_mse_loss(q, p_pos, p_neg2, jnp.array([5.0, 1.0]), t_neg2)
    # margins: q0 -> (1, 2) vs teacher (2, 3); q1 -> (4, 3) vs teacher (1, 0)
    np.testing.assert_allclose(float(loss2), (1 + 1 + 9 + 9) / 4)


def test_kl_distillation_hand_values():
    s = jnp.array([[0.0, 0.0]])
    t = jnp.array([[math.log(3.0), 0.0]])  # teacher probs (3/4, 1/4)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    np.testing.assert_allclose(float(losses.kl_distillation_loss(s, t)[0]), kl, rtol=1e-6)
    # At T=2 with doubled teacher scores the distributions are the same; T^2 scales by 4.
    got = float(losses.kl_distillation_loss(s, 2 * t, temperature=2.0)[0])
    np.testing.assert_allclose(got, 4 * kl, rtol=1e-6)
    assert float(losses.kl_distillation_loss(t, t)[0]) == pytest.approx(0.0, abs=1e-7)


# Row 0: cos(q,d+)=1, cos(q,d-)=0, cos(d+,d-)=0 -> m=1, t=0.5, x=0.5.
# Row 1: q=[2,0], d+=[3,4] (cos .6), d-=[-1,0] (cos -1), cos(d+,d-)=-.6 -> m=1.6, t=.2, x=1.4.
AM_Q = jnp.array([[1.0, 0.0], [2.0, 0.0]])
AM_POS = jnp.array([[1.0, 0.0], [3.0, 4.0]])
AM_NEG = jnp.array([[0.0, 1.0], [-1.0, 0.0]])


@pytest.mark.parametrize(
    "err,want",
    [
        ("squared", (0.25 + 1.96) / 2),
        ("l1", (0.5 + 1.4) / 2),
        ("softplus", (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-1.4))) / 2),
    ],
)
def test_adaptive_margin_hand_values(err, want):
    loss, m = losses.adaptive_margin_loss(AM_Q, AM_POS, AM_NEG, err=err)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["margin"]), 1.3, rtol=1e-5)
    np.testing.assert_allclose(float(m["target"]), 0.35, rtol=1e-5)
    # The pipeline layout (q, p (B, 1+k, D)) gives the same loss.
    p = jnp.stack([AM_POS, AM_NEG], axis=1)
    np.testing.assert_allclose(
        float(losses.adaptive_margin_loss(AM_Q, p, err=err)[0]), want, rtol=1e-5
    )


def test_adaptive_margin_has_no_stop_gradient_and_rejects_bad_err():
    """Finite differences see the target's dependence on d+ and d-; a stop-gradient would not."""
    r = np.random.default_rng(3)
    q, pos, neg = (r.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    f = jax.jit(lambda n: losses.adaptive_margin_loss(q, pos, n)[0])
    g = np.asarray(jax.grad(f)(neg))
    eps, fd = 1e-2, np.zeros_like(neg)
    for idx in np.ndindex(neg.shape):
        hi, lo = neg.copy(), neg.copy()
        hi[idx] += eps
        lo[idx] -= eps
        fd[idx] = (float(f(jnp.asarray(hi))) - float(f(jnp.asarray(lo)))) / (2 * eps)
    np.testing.assert_allclose(g, fd, atol=2e-3)
    with pytest.raises(ValueError, match="err must be"):
        losses.adaptive_margin_loss(AM_Q, AM_POS, AM_NEG, err="huber")
    with pytest.raises(ValueError, match="k >= 1"):
        losses.adaptive_margin_loss(AM_Q, AM_POS[:, None])  # no hard negative
    soft = losses.adaptive_margin_loss(AM_Q, AM_POS, AM_NEG, err="soft")[0]  # official name
    np.testing.assert_allclose(
        float(soft), float(losses.adaptive_margin_loss(AM_Q, AM_POS, AM_NEG, err="softplus")[0])
    )


# ----------------------------------------------------------------------------- multi-positive
# Query 0 has two positives, ids 10 and 11; row 1 samples passage 11 as ITS positive. Candidates
# [p0+ (10), p1+ (11), p0- (20), p1- (21)]: q0 -> [1, 1, 0, 0], q1 -> [0, 1, 0, 0] (scale 1).
MQ = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
MP = np.array([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]], np.float32)
M_IDS = np.array([[10, 20], [11, 21]], np.int32)
M_QPOS = np.array([[10, 11], [11, -1]], np.int32)
# Masked: p1+ is a positive of q0, so it is no negative of q0 (column dropped).
M_LOSS = 0.5 * ((_lse(1, 0, 0) - 1) + (_lse(0, 1, 0, 0) - 1))
M_LOSS_UNMASKED = 0.5 * ((_lse(1, 1, 0, 0) - 1) + (_lse(0, 1, 0, 0) - 1))
# Passage -> query over positives: p0+ -> [q0 1, q1 0]; p1+ -> [q0 1 (dropped: p1+ is q0's), q1 1].
M_BACK = 0.5 * ((_lse(1, 0) - 1) + (_lse(1) - 1))


def _mbatch():
    return {"p_ids": jnp.asarray(M_IDS), "q_pos_ids": jnp.asarray(M_QPOS)}


def test_other_rows_positive_of_the_query_is_not_a_negative():
    assert M_LOSS_UNMASKED - M_LOSS > 0.2  # counting p1+ as q0's negative is visible
    fn = jax.jit(loss_registry.make_loss(_cfg(scale=1.0)))
    loss, m = fn(jnp.asarray(MQ), jnp.asarray(MP), _mbatch())
    np.testing.assert_allclose(float(loss), M_LOSS, rtol=1e-6)
    np.testing.assert_allclose(float(m["hardest_neg_score"]), 0.0)  # q0's 1.0 was dropped
    # Without the query's positive set only exact duplicates of the sampled positive are masked.
    loss, _ = fn(jnp.asarray(MQ), jnp.asarray(MP), {"p_ids": jnp.asarray(M_IDS)})
    np.testing.assert_allclose(float(loss), M_LOSS_UNMASKED, rtol=1e-6)
    sym, _ = loss_registry.make_loss(_cfg(scale=1.0, symmetric=True))(MQ, MP, _mbatch())
    np.testing.assert_allclose(float(sym), 0.5 * (M_LOSS + M_BACK), rtol=1e-6)


def test_multi_positive_masking_across_devices():
    """One row per shard: q0's second positive lives on the other device."""
    mesh = sharding.make_mesh((2, 1), devices=jax.devices()[:2])
    sh = sharding.batch_sharding(mesh)
    args = [jax.device_put(x, sh) for x in (MQ, MP, M_IDS, M_QPOS)]
    for sym, want in ((False, M_LOSS), (True, 0.5 * (M_LOSS + M_BACK))):
        jit_global = jax.jit(
            lambda q, p, i, qp, s=sym: losses.contrastive_loss(
                q, p, i, scale=1.0, symmetric=s, q_pos_ids=qp
            )[0]
        )
        shard_map = jax.jit(
            lambda q, p, i, qp, s=sym: losses.contrastive_loss_sharded(
                q, p, i, mesh=mesh, scale=1.0, symmetric=s, q_pos_ids=qp
            )[0]
        )
        np.testing.assert_allclose(float(jit_global(*args)), want, rtol=1e-6)
        np.testing.assert_allclose(float(shard_map(*args)), want, rtol=1e-6)


def _am_ref(q, p, ids, qpos, err="squared", in_batch=True, static=None):
    """Independent float64 loops: (query, candidate) pairs minus the label and the positives."""
    q, p = q.astype(np.float64), p.astype(np.float64)
    b, n = p.shape[:2]
    cos = lambda a, c: a @ c / max(np.linalg.norm(a) * np.linalg.norm(c), 1e-8)  # noqa: E731
    if in_batch:
        cands = [(i, 0) for i in range(b)] + [(i, j) for i in range(b) for j in range(1, n)]
    errs = []
    for i in range(b):
        pos_set = {ids[i, 0], *(x for x in qpos[i] if x >= 0)}
        rows = cands if in_batch else [(i, j) for j in range(1, n)]
        for r, c in rows:
            if (r, c) == (i, 0) or ids[r, c] in pos_set:
                continue
            m = cos(q[i], p[i, 0]) - cos(q[i], p[r, c])
            x = m - (cos(p[i, 0], p[r, c]) / 2 + 0.5 if static is None else static)
            errs.append({"squared": x * x, "l1": abs(x), "softplus": math.log1p(math.exp(-x))}[err])
    return float(np.mean(errs))


@pytest.mark.parametrize("err", ["squared", "softplus"])
def test_adaptive_margin_in_batch_masks_other_positives(err):
    cfg = _cfg(name="adaptive_margin", margin_err=err, margin_in_batch=True)
    fn = jax.jit(loss_registry.make_loss(cfg))
    loss, m = fn(jnp.asarray(MQ), jnp.asarray(MP), _mbatch())
    want = _am_ref(MQ, MP, M_IDS, M_QPOS, err)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # By hand (squared; zero vectors have cosine 0): q0 keeps p0-, p1- -> m = 1, t = 0.5 twice;
    # q1 (s(q1,p1+) = c = 1/sqrt2) keeps p0+ (m = c, t = c/2 + 1/2) and p0-, p1- (m = c, t = 1/2).
    if err == "squared":
        c = 1 / math.sqrt(2)
        hand = (2 * 0.25 + (c / 2 - 0.5) ** 2 + 2 * (c - 0.5) ** 2) / 5
        np.testing.assert_allclose(float(loss), hand, rtol=1e-5)
    unmasked = _am_ref(MQ, MP, M_IDS, np.full_like(M_QPOS, -1), err)
    loss_u, _ = fn(jnp.asarray(MQ), jnp.asarray(MP), {"p_ids": jnp.asarray(M_IDS)})
    np.testing.assert_allclose(float(loss_u), unmasked, rtol=1e-5)
    assert abs(unmasked - want) > 0.02  # the pair (q0, p1+) would add x = 1/2 - 3c/2


def test_adaptive_margin_pairs_skip_a_negative_that_is_a_positive():
    r = np.random.default_rng(4)
    q, p = r.normal(size=(3, 4)).astype(np.float32), r.normal(size=(3, 3, 4)).astype(np.float32)
    ids = np.array([[0, 5, 1], [1, 6, 7], [2, 2, 8]], np.int32)  # row 0 mined q0's 2nd positive
    qpos = np.array([[0, 1], [1, -1], [2, -1]], np.int32)
    cfg = _cfg(name="adaptive_margin", margin_err="l1")
    loss, _ = loss_registry.make_loss(cfg)(q, p, {"p_ids": ids, "q_pos_ids": qpos})
    want = _am_ref(q, p, ids, qpos, "l1", in_batch=False)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    plain, _ = losses.adaptive_margin_loss(q, p, err="l1")  # all 6 pairs
    assert abs(float(plain) - want) > 1e-3


def test_adaptive_margin_static_target_and_stop_gradient():
    p = jnp.stack([AM_POS, AM_NEG], axis=1)
    loss, m = loss_registry.make_loss(_cfg(name="adaptive_margin", margin_target="static"))(
        AM_Q, p, {}
    )
    np.testing.assert_allclose(float(loss), ((1 - 0.5) ** 2 + (1.6 - 0.5) ** 2) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(m["target"]), 0.5)
    # stop_gradient: the gradient is that of err(m - t0) with t0 frozen at its current value.
    r = np.random.default_rng(5)
    q, pos, neg = (r.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    t0 = losses._cos(pos, neg) / 2 + 0.5
    frozen = lambda n: jnp.mean(jnp.square(losses._cos(q, pos) - losses._cos(q, n) - t0))  # noqa
    stop = lambda n: losses.adaptive_margin_loss(q, pos, n, stop_gradient=True)[0]  # noqa: E731
    live = lambda n: losses.adaptive_margin_loss(q, pos, n)[0]  # noqa: E731
    np.testing.assert_allclose(float(stop(neg)), float(live(neg)), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(stop)(neg), jax.grad(frozen)(neg), atol=1e-6)
    assert float(jnp.abs(jax.grad(stop)(neg) - jax.grad(live)(neg)).max()) > 1e-3


# ----------------------------------------------------------------------------- registry


def _cfg(**kw):
    import ml_collections

    from dualenc.training.config import base_config

    c = base_config().loss
    c.update(kw)
    return ml_collections.FrozenConfigDict(c)


def test_registry_names():
    assert {"contrastive", "adaptive_margin", "margin_mse", "kl"} <= set(loss_registry.LOSSES)


def test_margin_mse_and_kl_from_batch_hand_values():
    q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    p = jnp.array([[[2.0, 0.0], [1.0, 1.0]], [[0.0, 3.0], [0.0, -1.0]]])  # margins 1, 4
    t = jnp.array([[5.0, 3.0], [1.0, 0.0]])  # teacher margins 2, 1
    loss, m = loss_registry.make_loss(_cfg(name="margin_mse"))(q, p, {"teacher_scores": t})
    np.testing.assert_allclose(float(loss), ((1 - 2) ** 2 + (4 - 1) ** 2) / 2)
    np.testing.assert_allclose(float(m["teacher_margin"]), 1.5)
    # kl: student scale * [2, 1] and [3, -1]; teacher [5, 3] / 2, [1, 0] / 2.
    kl = loss_registry.make_loss(_cfg(name="kl", scale=0.5, temperature=2.0))
    got, _ = kl(q, p, {"teacher_scores": t})

    def one(s, tt):
        ps = np.exp(s) / np.exp(s).sum()
        pt = np.exp(tt) / np.exp(tt).sum()
        return float(np.sum(pt * np.log(pt / ps)))

    want = (
        one(np.array([1.0, 0.5]), np.array([2.5, 1.5]))
        + one(np.array([1.5, -0.5]), np.array([0.5, 0.0]))
    ) / 2
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("name", ["margin_mse", "kl"])
def test_distillation_without_teacher_scores_fails_at_trace_time(name):
    fn = jax.jit(loss_registry.make_loss(_cfg(name=name)))
    with pytest.raises(ValueError, match="teacher_scores"):
        fn(jnp.asarray(MQ), jnp.asarray(MP), _mbatch())


@pytest.mark.parametrize(
    "kw,nneg,key",
    [
        ({"name": "infonce"}, None, "loss.name"),
        ({"scale": 0.0}, None, "loss.scale"),
        ({"scale": -1.0}, None, "loss.scale"),
        ({"name": "adaptive_margin", "margin_err": "huber"}, None, "loss.margin_err"),
        ({"margin_target": "fixed"}, None, "loss.margin_target"),
        ({"name": "kl", "temperature": 0.0}, None, "loss.temperature"),
        ({"name": "kl", "symmetric": True}, None, "loss.symmetric"),
        ({"name": "margin_mse"}, 0, "data.num_negatives"),
        ({"name": "adaptive_margin"}, 0, "loss.margin_in_batch"),
    ],
)
def test_validate_loss_config_names_the_key(kw, nneg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        loss_registry.validate_loss_config(_cfg(**kw), nneg)
    if nneg is None:  # make_loss validates too (it does not know data.num_negatives)
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            loss_registry.make_loss(_cfg(**kw))


def test_validate_accepts_defaults_and_in_batch_margin_without_negatives():
    for name in loss_registry.LOSSES:
        loss_registry.validate_loss_config(_cfg(name=name), 1)
    loss_registry.validate_loss_config(_cfg(name="adaptive_margin", margin_in_batch=True), 0)


# ----------------------------------------------------------------------------- sharded == single


@pytest.fixture(scope="module")
def shard_data():
    """B=16 rows, k=2; query 3's positive set includes row 12's positive (another device on
    every mesh), row 5 mined its own positive, rows 2 and 9 share a positive."""
    r = np.random.default_rng(6)
    b, k, d = 16, 2, 8
    p = r.normal(size=(b, 1 + k, d)).astype(np.float32)
    ids = np.arange(b * (1 + k), dtype=np.int32).reshape(b, 1 + k)
    p[9, 0], ids[9, 0] = p[2, 0], ids[2, 0]
    p[5, 2], ids[5, 2] = p[5, 0], ids[5, 0]
    qpos = np.full((b, 3), -1, np.int32)
    qpos[:, 0] = ids[:, 0]
    qpos[3, 1], qpos[12, 1] = ids[12, 0], ids[3, 0]
    q = (p[:, 0] + 0.5 * r.normal(size=(b, d))).astype(np.float32)
    teacher = r.normal(size=(b, 1 + k)).astype(np.float32)
    return {"q": q, "p": p, "p_ids": ids, "q_pos_ids": qpos, "teacher_scores": teacher}


CONFIGS = [
    {"name": "contrastive", "symmetric": True},
    {"name": "adaptive_margin", "margin_in_batch": True},
    {"name": "adaptive_margin"},
    {"name": "margin_mse"},
    {"name": "kl", "temperature": 2.0},
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_registry_losses_sharded_equal_single_device(kw, shape, shard_data):
    fn = loss_registry.make_loss(_cfg(**kw))

    def vg(q, p, batch):
        return jax.value_and_grad(lambda q, p: fn(q, p, batch), argnums=(0, 1), has_aux=True)(q, p)

    data = dict(shard_data)
    q, p = data.pop("q"), data.pop("p")
    (want, _), (wq, wp) = jax.jit(vg)(q, p, data)
    mesh = sharding.make_mesh(shape)
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))  # noqa: E731
    (got, _), (gq, gp) = jax.jit(vg)(put(q), put(p), {k: put(v) for k, v in data.items()})
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gq), np.asarray(wq), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gp), np.asarray(wp), atol=1e-5)
    assert float(jnp.abs(wp).max()) > 1e-4


# ----------------------------------------------------------------------------- finite differences


@pytest.fixture(scope="module")
def fd_data():
    """B=4, k=2, D=3 with a shared positive (rows 1, 3) and a query with two positives, so the
    masks take part; well away from l1's kink (|m - t| > eps for every pair)."""
    r = np.random.default_rng(11)
    p = r.normal(size=(4, 3, 3)).astype(np.float32)
    ids = np.arange(12, dtype=np.int32).reshape(4, 3)
    p[3, 0], ids[3, 0] = p[1, 0], ids[1, 0]
    qpos = np.full((4, 2), -1, np.int32)
    qpos[:, 0] = ids[:, 0]
    qpos[0, 1] = ids[2, 0]
    q = (p[:, 0] + 0.7 * r.normal(size=(4, 3))).astype(np.float32)
    teacher = r.normal(size=(4, 3)).astype(np.float32)
    return {"q": q, "p": p, "p_ids": ids, "q_pos_ids": qpos, "teacher_scores": teacher}


FD_CONFIGS = [
    {"name": "adaptive_margin", "margin_err": e, "margin_target": t, "margin_in_batch": ib}
    for e in ("squared", "l1", "softplus")
    for t in ("adaptive", "static")
    for ib in (False, True)
] + [
    {"name": "adaptive_margin", "margin_in_batch": True, "margin_stop_gradient": True},
    {"name": "margin_mse"},
    {"name": "kl", "scale": 5.0, "temperature": 2.0},
    {"name": "contrastive"},
]


@pytest.mark.parametrize("kw", FD_CONFIGS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_gradients_match_central_differences(kw, fd_data):
    """jax.grad w.r.t. q and p against float32 central differences (eps 1e-2: truncation error
    O(eps^2) ~ 1e-4, rounding ~ 1e-7 / eps ~ 1e-5). With a stop-gradient target (a function of
    the passages only) the q part must still match; the p part must differ from the live one."""
    data = dict(fd_data)
    q, p = data.pop("q"), data.pop("p")
    x0 = np.concatenate([q.ravel(), p.ravel()])

    def loss_of(cfg_kw):
        fn = loss_registry.make_loss(_cfg(**cfg_kw))
        return lambda x: fn(x[: q.size].reshape(q.shape), x[q.size :].reshape(p.shape), data)[0]

    f = loss_of(kw)
    grad = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x0)))
    eps = 1e-2
    steps = eps * np.eye(x0.size, dtype=np.float32)
    fv = jax.jit(jax.vmap(f))
    fd = (np.asarray(fv(x0 + steps), np.float64) - np.asarray(fv(x0 - steps))) / (2 * eps)
    assert np.abs(grad).max() > 1e-2  # a zero gradient would pass trivially
    if not kw.get("margin_stop_gradient"):
        np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=2e-3)
        return
    np.testing.assert_allclose(grad[: q.size], fd[: q.size], rtol=2e-2, atol=2e-3)
    assert np.abs(grad[q.size :] - fd[q.size :]).max() > 1e-2


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_matryoshka_of_the_full_dim_is_the_plain_loss():
    rng = np.random.default_rng(0)
    q = jnp.asarray(_unit_rows(rng.standard_normal((6, 16))), jnp.float32)
    p = jnp.asarray(_unit_rows(rng.standard_normal((6, 3, 16))), jnp.float32)
    for name in ("contrastive", "adaptive_margin"):
        plain, m_plain = loss_registry.make_loss(_cfg(name=name))(q, p, {})
        for normalize in (True, False):  # unit rows: renormalising the full prefix is a no-op
            fn = loss_registry.make_loss(
                _cfg(name=name, matryoshka_dims=(16,)), normalize=normalize
            )
            loss, m = fn(q, p, {})
            np.testing.assert_allclose(float(loss), float(plain), rtol=1e-6)
            np.testing.assert_allclose(float(m["accuracy"]), float(m_plain["accuracy"]))
            assert float(m["loss@16"]) == pytest.approx(float(plain), rel=1e-6)


def test_matryoshka_sums_the_prefix_losses_and_their_gradients():
    """dims (16, 4), weights (1, 0.5): the plain loss plus half the loss of the renormalised
    first 4 dims, in value and gradient; the prefix term's gradient reaches only those dims."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(_unit_rows(rng.standard_normal((6, 16))), jnp.float32)
    p = jnp.asarray(_unit_rows(rng.standard_normal((6, 2, 16))), jnp.float32)
    plain = loss_registry.make_loss(_cfg())
    cfg = _cfg(matryoshka_dims=(16, 4), matryoshka_weights=(1.0, 0.5))
    mat = loss_registry.make_loss(cfg, normalize=True)

    def unit(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def manual(q, p):
        full = plain(q, p, {})[0]
        return full + 0.5 * plain(unit(q[:, :4]), unit(p[..., :4]), {})[0]

    loss, m = mat(q, p, {})
    np.testing.assert_allclose(float(loss), float(manual(q, p)), rtol=1e-6)
    assert set(m) >= {"loss", "loss@16", "loss@4", "accuracy"}
    g = jax.grad(lambda q, p: mat(q, p, {})[0], argnums=(0, 1))(q, p)
    g_ref = jax.grad(manual, argnums=(0, 1))(q, p)
    g_full = jax.grad(lambda q, p: plain(q, p, {})[0], argnums=(0, 1))(q, p)
    for a, b, f in zip(g, g_ref, g_full, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
        prefix = np.asarray(a - f)  # the 4-dim term's own gradient
        assert np.abs(prefix[..., :4]).max() > 1e-3 and np.abs(prefix[..., 4:]).max() < 1e-6


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"matryoshka_dims": (16, 0)}, "loss.matryoshka_dims=(16, 0) must be positive"),
        ({"matryoshka_dims": (8, 8)}, "repeated"),
        ({"matryoshka_dims": (8, 4), "matryoshka_weights": (1.0,)}, "loss.matryoshka_weights"),
    ],
)
def test_matryoshka_bad_config_names_the_key(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loss_registry.validate_loss_config(_cfg(**kw))
    fn = loss_registry.make_loss(_cfg(matryoshka_dims=(32,)))
    with pytest.raises(ValueError, match="exceeds the 16-dim"):
        fn(jnp.ones((2, 16)), jnp.ones((2, 2, 16)), {})
