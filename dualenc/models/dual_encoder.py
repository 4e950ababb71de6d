"""Dual encoder as pure functions over plain param trees: embed texts, compare embeddings.

Param tree: shared (tied) towers → {'encoder': tower}; separate → {'q_encoder': tower,
'p_encoder': tower}. A tower is the arch's base-model params (HF names, see convert.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dualenc.models import pooling
from dualenc.models.registry import get_arch

SHARED_KEYS = ("encoder",)
SEPARATE_KEYS = ("q_encoder", "p_encoder")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """What turns token ids into one vector: architecture, its config, pooling, normalisation."""

    arch: str  # HF model_type: 'bert', 'distilbert', 'deberta-v2'
    config: Any  # the arch's config dataclass
    pooling: str = "mean"  # 'cls' | 'mean' | 'max' | 'pooler'
    normalize: bool = False  # L2-normalise embeddings (cosine geometry)

    def __post_init__(self):
        get_arch(self.arch)
        if self.pooling not in pooling.POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; known: {list(pooling.POOLINGS)}")

    def model(self):
        """The Linen base model of this spec."""
        return get_arch(self.arch).model_cls(self.config)


def _rngs(rngs):
    if rngs is None or isinstance(rngs, Mapping):
        return rngs
    return {"dropout": rngs}  # a bare PRNG key


def embed(
    spec: EncoderSpec,
    tower_params,
    input_ids,
    attention_mask,
    *,
    token_type_ids=None,
    deterministic: bool = True,
    rngs=None,
):
    """(..., L) ids + mask → (..., D) float32 embeddings; leading dims are flattened and restored.

    `rngs`: a PRNG key or {'dropout': key}; needed when `deterministic=False`.
    """
    lead, seq_len = input_ids.shape[:-1], input_ids.shape[-1]
    ids = input_ids.reshape(-1, seq_len)  # (B, L)
    mask = attention_mask.reshape(-1, seq_len)
    tt = None if token_type_ids is None else token_type_ids.reshape(-1, seq_len)
    hidden, pooled = spec.model().apply(
        {"params": tower_params}, ids, mask, tt, deterministic, rngs=_rngs(rngs)
    )
    x = pooling.pool(hidden, mask, spec.pooling, pooled)  # (B, D)
    if spec.normalize:
        x = pooling.l2_normalize(x)
    return x.reshape(*lead, x.shape[-1])


PACKABLE_ARCHS = ("bert", "distilbert")  # DeBERTa's relative positions are not per segment


def embed_packed(
    spec: EncoderSpec,
    tower_params,
    input_ids,
    segment_ids,
    position_ids=None,
    *,
    num_segments: int,
    deterministic: bool = True,
    rngs=None,
):
    """Packed rows → (B, S, D) float32 embeddings, one per text of each row.

    input_ids, segment_ids, position_ids (B, L): several texts per row (see `inference.packing`);
    segment s of row b is embedded as the same text alone would be. Empty segments are zeros.
    """
    if spec.arch not in PACKABLE_ARCHS:
        raise ValueError(
            f"sequence packing supports {list(PACKABLE_ARCHS)}, not {spec.arch!r} "
            "(its relative position buckets would cross segments); turn packing off"
        )
    hidden, pooled = spec.model().apply(
        {"params": tower_params},
        input_ids,
        (segment_ids > 0).astype(jnp.int32),
        None,
        deterministic,
        segment_ids=segment_ids,
        position_ids=position_ids,
        rngs=_rngs(rngs),
    )
    x = pooling.pool_segments(hidden, segment_ids, num_segments, spec.pooling, pooled)
    return pooling.l2_normalize(x) if spec.normalize else x


def tower(params: Mapping[str, Any], side: str):
    """The tower params for side 'q' or 'p' (the shared one when towers are tied)."""
    if "encoder" in params:
        return params["encoder"]
    key = {"q": "q_encoder", "p": "p_encoder"}[side]
    if key not in params:
        raise KeyError(
            f"dual-encoder params need 'encoder' or {list(SEPARATE_KEYS)}, got {sorted(params)}"
        )
    return params[key]


def embed_queries(spec: EncoderSpec, params, input_ids, attention_mask, **kwargs):
    """Query embeddings (..., D) with the query (or shared) tower."""
    return embed(spec, tower(params, "q"), input_ids, attention_mask, **kwargs)


def embed_passages(spec: EncoderSpec, params, input_ids, attention_mask, **kwargs):
    """Passage embeddings (..., D) with the passage (or shared) tower."""
    return embed(spec, tower(params, "p"), input_ids, attention_mask, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def init_module(model, rng) -> dict:
    """Random params of a Linen encoder module (compiled once per module and config)."""
    ids = jnp.ones((1, 4), jnp.int32)
    return model.init(rng, ids, ids)["params"]


def init_tower(spec: EncoderSpec, rng) -> dict:
    """Random tower params (as the arch's initialisers)."""
    return init_module(spec.model(), rng)


def init_dual_params(spec: EncoderSpec, rng, shared: bool = True, tower_params=None) -> dict:
    """{'encoder': t} when shared, else {'q_encoder': t_q, 'p_encoder': t_p}.

    With `tower_params` (e.g. pretrained weights) every tower starts as a copy of them;
    otherwise towers are initialised randomly (separate towers from different keys).
    """
    keys = SHARED_KEYS if shared else SEPARATE_KEYS
    if tower_params is not None:
        return {k: jax.tree.map(_copy, tower_params) for k in keys}
    rngs = jax.random.split(rng, len(keys))
    return {k: init_tower(spec, r) for k, r in zip(keys, rngs, strict=True)}


def _copy(x):
    """Host arrays are mutable: each tower gets its own; jax arrays are immutable."""
    return np.array(x) if isinstance(x, np.ndarray) else x


def similarity(q, p, kind: str = "dot"):
    """(Nq, D) × (Np, D) → (Nq, Np) scores: 'dot' product or 'cos'ine."""
    if kind == "cos":
        q, p = pooling.l2_normalize(q), pooling.l2_normalize(p)
    elif kind != "dot":
        raise ValueError(f"similarity must be 'dot' or 'cos', got {kind!r}")
    return jnp.einsum("qd,pd->qp", q.astype(jnp.float32), p.astype(jnp.float32))
