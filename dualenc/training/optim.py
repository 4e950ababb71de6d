"""Optimizer and learning-rate schedule from `config.train` (AdamW, warmup, decay, clipping).

Weight decay follows BERT/DPR practice: it applies to dense kernels only, never to biases,
LayerNorm scales or embedding tables (`decay_mask`).
"""

from __future__ import annotations

import re

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")
NO_DECAY = r"(^|/)(bias|scale|embedding)$"


def make_schedule(tcfg, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then linear / cosine decay to 0, or constant."""
    lr, warmup = float(tcfg.learning_rate), int(tcfg.warmup_steps)
    if tcfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {tcfg.schedule!r}")
    decay_steps = max(1, num_steps - warmup)
    if tcfg.schedule == "linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    elif tcfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def decay_mask(params, pattern: str = NO_DECAY):
    """Pytree of bools: True where weight decay applies (leaf path does not match `pattern`)."""
    rx = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda p, _: not rx.search(_path_str(p)), params)


def make_optimizer(tcfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(clip_by_global_norm → AdamW with masked decay, schedule). grad_clip_norm ≤ 0: no clip.

    Gradient accumulation is done inside the train step (one optimizer update per global batch),
    so the optimizer itself never sees micro-batches.
    """
    schedule = make_schedule(tcfg, num_steps)
    adamw = optax.adamw(
        schedule,
        b1=float(tcfg.get("adam_b1", 0.9)),
        b2=float(tcfg.get("adam_b2", 0.999)),
        eps=float(tcfg.get("adam_eps", 1e-6)),
        weight_decay=float(tcfg.weight_decay),
        mask=decay_mask,
    )
    clip = float(tcfg.grad_clip_norm)
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
    return tx, schedule
