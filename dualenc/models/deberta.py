"""DeBERTa-v2/v3 encoder in Flax Linen, numerically equal to transformers' `DebertaV2Model`.

Submodule names mirror the Hugging Face state-dict names (`encoder/layer/0/attention/self/
query_proj`, `encoder/rel_embeddings`, ...) so that `dualenc.models.convert` maps weights both ways.
Disentangled attention: content→content plus content→position (c2p) and position→content (p2c)
scores over log-bucketed relative positions, as in He et al. (2021) and the transformers port.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dualenc.models import target
from dualenc.models.deberta_config import (
    ACTIVATIONS,
    POS_ATT_TYPES,
    DebertaV2Config,
    build_relative_position,
)
from dualenc.models.dropout import Dropout
from dualenc.models.layers import Dense, LayerNorm, maybe_remat


def _dtypes(cfg: DebertaV2Config) -> dict[str, Any]:
    return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


def _dense(cfg: DebertaV2Config, features: int, name: str, use_bias: bool = True) -> Dense:
    init = nn.initializers.normal(cfg.initializer_range)
    return Dense(features, use_bias=use_bias, kernel_init=init, name=name, **_dtypes(cfg))


def _embed(cfg: DebertaV2Config, num: int, features: int, name: str, pad: int | None = None):
    normal = nn.initializers.normal(cfg.initializer_range)

    def init(key, shape, dtype=jnp.float32):
        table = normal(key, shape, dtype)
        return table if pad is None else table.at[pad].set(0)  # HF zeroes the padding_idx row

    return nn.Embed(num, features, embedding_init=init, name=name, **_dtypes(cfg))


def _layer_norm(cfg: DebertaV2Config, name: str = "LayerNorm") -> LayerNorm:
    return LayerNorm(epsilon=cfg.layer_norm_eps, name=name, **_dtypes(cfg))  # two-pass variance


class DebertaV2Embeddings(nn.Module):
    """Word (+ absolute position) (+ token type) embeddings → LayerNorm → × mask → dropout."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool):
        cfg = self.config
        seq_len = input_ids.shape[1]
        emb_size = cfg.embedding_size or cfg.hidden_size
        x = _embed(cfg, cfg.vocab_size, emb_size, "word_embeddings", cfg.pad_token_id)(input_ids)
        if cfg.position_biased_input:
            if seq_len > cfg.max_position_embeddings:
                raise ValueError(
                    f"sequence length {seq_len} > max_position_embeddings "
                    f"{cfg.max_position_embeddings}"
                )
            pos = _embed(cfg, cfg.max_position_embeddings, emb_size, "position_embeddings")
            x = x + pos(jnp.arange(seq_len)[None, :])
        if cfg.type_vocab_size > 0:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + _embed(cfg, cfg.type_vocab_size, emb_size, "token_type_embeddings")(
                token_type_ids
            )
        if emb_size != cfg.hidden_size:
            x = _dense(cfg, cfg.hidden_size, "embed_proj", use_bias=False)(x)
        x = _layer_norm(cfg)(x)
        x = x * attention_mask[:, :, None].astype(x.dtype)  # (B, L, H)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class DisentangledSelfAttention(nn.Module):
    """Multi-head attention with c2p / p2c relative-position terms (HF `attention.self`)."""

    config: DebertaV2Config

    def setup(self):
        cfg = self.config
        self.query_proj = _dense(cfg, cfg.hidden_size, "query_proj")
        self.key_proj = _dense(cfg, cfg.hidden_size, "key_proj")
        self.value_proj = _dense(cfg, cfg.hidden_size, "value_proj")
        if cfg.relative_attention and not cfg.share_att_key:
            if "c2p" in cfg.pos_att_type:
                self.pos_key_proj = _dense(cfg, cfg.hidden_size, "pos_key_proj")
            if "p2c" in cfg.pos_att_type:
                self.pos_query_proj = _dense(cfg, cfg.hidden_size, "pos_query_proj")
        self.pos_dropout = Dropout(cfg.hidden_dropout_prob)
        self.dropout = Dropout(cfg.attention_probs_dropout_prob)

    def _heads(self, x):
        """(..., T, H) → (..., N, T, D)."""
        x = x.reshape(*x.shape[:-1], self.config.num_attention_heads, self.config.head_dim)
        return jnp.swapaxes(x, -2, -3)

    def __call__(self, x, mask2d, rel_embeddings, deterministic: bool):
        cfg = self.config
        batch, seq_len, _ = x.shape
        q = self._heads(self.query_proj(x))  # (B, N, L, D)
        k = self._heads(self.key_proj(x))
        v = self._heads(self.value_proj(x))
        scale_factor = 1 + sum(t in cfg.pos_att_type for t in POS_ATT_TYPES)
        scale = jnp.asarray(math.sqrt(cfg.head_dim * scale_factor), jnp.float32).astype(q.dtype)
        scores = jnp.einsum("bnid,bnjd->bnij", q, k / scale)  # (B, N, L, L)
        if cfg.relative_attention:
            rel_embeddings = self.pos_dropout(rel_embeddings, deterministic=deterministic)
            scores = scores + self._relative_scores(q, k, rel_embeddings, scale, seq_len)
        scores = scores.astype(jnp.float32)
        scores = jnp.where(mask2d[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = self.dropout(probs, deterministic=deterministic)
        ctx = jnp.einsum("bnij,bnjd->bind", probs, v)  # (B, L, N, D)
        return ctx.reshape(batch, seq_len, cfg.hidden_size)

    def _relative_scores(self, q, k, rel_embeddings, scale, seq_len: int):
        """c2p[i, j] = q_i·Kr[δ(i, j)] and p2c[i, j] = k_j·Qr[δ(j, i)], δ = bucketed distance."""
        cfg = self.config
        span = cfg.att_span
        rel = build_relative_position(seq_len, seq_len, cfg.position_buckets, cfg.rel_max_position)
        rel_embeddings = rel_embeddings[: 2 * span]  # (2S, H)
        if cfg.share_att_key:
            pos_q_proj, pos_k_proj = self.query_proj, self.key_proj
        else:
            pos_q_proj = getattr(self, "pos_query_proj", None)
            pos_k_proj = getattr(self, "pos_key_proj", None)
        score = 0
        if "c2p" in cfg.pos_att_type:
            pos_k = self._heads(pos_k_proj(rel_embeddings))  # (N, 2S, D)
            c2p = jnp.einsum("bnid,nrd->bnir", q, pos_k)  # (B, N, L, 2S)
            idx = np.clip(rel + span, 0, 2 * span - 1)  # (L, L): [i, j]
            c2p = _take_last(c2p, idx)
            score = score + c2p / scale
        if "p2c" in cfg.pos_att_type:
            pos_q = self._heads(pos_q_proj(rel_embeddings))  # (N, 2S, D)
            p2c = jnp.einsum("bnjd,nrd->bnjr", k, pos_q)  # (B, N, L, 2S)
            idx = np.clip(-rel + span, 0, 2 * span - 1)  # (L, L): [j, i]
            p2c = _take_last(p2c, idx)
            score = score + jnp.swapaxes(p2c, -1, -2) / scale
        return score


def _take_last(x, idx: np.ndarray):
    """x[..., i, idx[i, j]] for a static (L, L) index already clipped into range."""
    idx = jnp.asarray(idx, jnp.int32)[None, None]
    return jnp.take_along_axis(x, idx, axis=-1, mode="promise_in_bounds")


class _ResidualOutput(nn.Module):
    """dense → dropout → LayerNorm(· + residual) (HF `*SelfOutput` / `*Output`)."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        x = _dense(self.config, self.config.hidden_size, "dense")(x)
        x = Dropout(self.config.hidden_dropout_prob)(x, deterministic=deterministic)
        return _layer_norm(self.config)(x + residual)


class _Intermediate(nn.Module):
    config: DebertaV2Config

    @nn.compact
    def __call__(self, x):
        x = _dense(self.config, self.config.intermediate_size, "dense")(x)
        return ACTIVATIONS[self.config.hidden_act](x)


class _Attention(nn.Module):
    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask2d, rel_embeddings, deterministic: bool):
        ctx = DisentangledSelfAttention(self.config, name="self")(
            x, mask2d, rel_embeddings, deterministic
        )
        return _ResidualOutput(self.config, name="output")(ctx, x, deterministic)


class DebertaV2Layer(nn.Module):
    """One transformer block: disentangled attention, then the feed-forward block."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask2d, rel_embeddings, deterministic: bool):
        x = _Attention(self.config, name="attention")(x, mask2d, rel_embeddings, deterministic)
        h = _Intermediate(self.config, name="intermediate")(x)
        return _ResidualOutput(self.config, name="output")(h, x, deterministic)


class _Layers(nn.Module):
    """Holds the blocks under names '0', '1', … so params mirror HF `encoder.layer.N`."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask2d, rel_embeddings, deterministic: bool):
        cfg = self.config
        # static_argnums counts `self` as 0: deterministic is argument 4.
        layer_cls = maybe_remat(DebertaV2Layer, cfg.remat, static_argnums=(4,))
        x = target.keep_rows_split(x)
        for i in range(cfg.num_hidden_layers):
            x = layer_cls(cfg, name=str(i))(x, mask2d, rel_embeddings, deterministic)
            x = target.keep_rows_split(x)
        return x


class DebertaV2Encoder(nn.Module):
    """Layers plus the shared relative-position embeddings (optionally layer-normed)."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool):
        cfg = self.config
        m = attention_mask
        mask2d = (m[:, :, None] * m[:, None, :]) != 0  # (B, L, L): HF's 1-D → 2-D mask
        rel_embeddings = None
        if cfg.relative_attention:
            table = _embed(cfg, 2 * cfg.att_span, cfg.hidden_size, "rel_embeddings")
            rel_embeddings = table.embedding.astype(jnp.dtype(cfg.dtype))  # (2S, H)
            if "layer_norm" in [s.strip() for s in cfg.norm_rel_ebd.lower().split("|")]:
                rel_embeddings = _layer_norm(cfg)(rel_embeddings)
        return _Layers(cfg, name="layer")(x, mask2d, rel_embeddings, deterministic)


class DebertaV2Model(nn.Module):
    """DeBERTa-v2/v3 encoder → (hidden (B, L, H), None): DeBERTa has no tanh pooler."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = DebertaV2Embeddings(self.config, name="embeddings")(
            input_ids, attention_mask, token_type_ids, deterministic
        )
        x = DebertaV2Encoder(self.config, name="encoder")(x, attention_mask, deterministic)
        return x, None


class ContextPooler(nn.Module):
    """First token → dropout → dense → activation (HF `ContextPooler`)."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        cfg = self.config
        x = Dropout(cfg.pooler_dropout)(hidden[:, 0], deterministic=deterministic)
        x = _dense(cfg, cfg.pooler_hidden_size, "dense")(x)
        return ACTIVATIONS[cfg.pooler_hidden_act](x)


class DebertaV2ForSequenceClassification(nn.Module):
    """`deberta` encoder → `pooler` → dropout → `classifier`; returns logits (B, num_labels)."""

    config: DebertaV2Config
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        cfg = self.config
        hidden, _ = DebertaV2Model(cfg, name="deberta")(
            input_ids, attention_mask, token_type_ids, deterministic
        )
        x = ContextPooler(cfg, name="pooler")(hidden, deterministic)
        rate = cfg.hidden_dropout_prob if cfg.cls_dropout is None else cfg.cls_dropout
        x = Dropout(rate)(x, deterministic=deterministic)
        return _dense(cfg, self.num_labels, "classifier")(x)
