"""DeBERTa-v2/v3 encoder in Flax Linen, numerically equal to transformers' `DebertaV2Model`.

Submodule names mirror the Hugging Face state-dict names (`encoder/layer/0/attention/self/
query_proj`, `encoder/rel_embeddings`, ...) so that `dualenc.models.convert` maps weights both ways.
Disentangled attention: content→content plus content→position (c2p) and position→content (p2c)
scores over log-bucketed relative positions, as in He et al. (2021) and the transformers port.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dualenc.models import target
from dualenc.models.dropout import Dropout
from dualenc.models.layers import Dense, LayerNorm, maybe_remat

_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_fast": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}
_POS_ATT_TYPES = ("c2p", "p2c")
_DTYPES = ("float32", "bfloat16", "float16")


def _pos_att_tuple(value: Any) -> tuple[str, ...]:
    """HF stores pos_att_type as a list or as the legacy 'p2c|c2p' string."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.lower().split("|")
    return tuple(str(v).strip().lower() for v in value if str(v).strip())


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
    """DeBERTa-v2/v3 hyper-parameters; defaults follow transformers' `DebertaV2Config`."""

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    norm_rel_ebd: str = "none"
    share_att_key: bool = False
    pos_att_type: tuple[str, ...] = ()
    position_biased_input: bool = True
    pad_token_id: int | None = 0
    embedding_size: int | None = None
    pooler_hidden_size: int | None = None
    pooler_hidden_act: str = "gelu"
    pooler_dropout: float = 0.0
    cls_dropout: float | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = False  # or a `layers.REMAT_POLICIES` name

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("pos_att_type", _pos_att_tuple(self.pos_att_type))
        if self.pooler_hidden_size is None:
            set_("pooler_hidden_size", self.hidden_size)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        for act in (self.hidden_act, self.pooler_hidden_act):
            if act not in _ACTIVATIONS:
                raise ValueError(f"unsupported activation {act!r}; known: {sorted(_ACTIVATIONS)}")
        bad = [t for t in self.pos_att_type if t not in _POS_ATT_TYPES]
        if bad:
            raise ValueError(f"unsupported pos_att_type {bad}; known: {list(_POS_ATT_TYPES)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides: Any) -> DebertaV2Config:
        """Builds the config from a transformers config.json dict (unknown keys are ignored);
        `overrides` sets fields such as dtype / remat."""
        model_type = d.get("model_type", "deberta-v2")
        if model_type != "deberta-v2":
            raise ValueError(f"DebertaV2Config needs model_type 'deberta-v2', got {model_type!r}")
        if d.get("conv_kernel_size", 0) > 0:
            raise ValueError("DeBERTa-v2 ConvLayer (conv_kernel_size > 0) is not supported")
        heads = d.get("num_attention_heads", cls.num_attention_heads)
        head_size = d.get("hidden_size", cls.hidden_size) // heads
        if d.get("attention_head_size", head_size) != head_size:
            raise ValueError(
                "attention_head_size != hidden_size // num_attention_heads unsupported"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "param_dtype", "remat"}
        kwargs = {k: d[k] for k in names if k in d}
        if kwargs.get("embedding_size") == d.get("hidden_size", cls.hidden_size):
            kwargs["embedding_size"] = None
        return cls(**{**kwargs, **overrides})

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that `transformers.DebertaV2Config(**d)` / AutoConfig loads."""
        d = {"model_type": "deberta-v2"}
        for f in dataclasses.fields(self):
            if f.name in ("dtype", "param_dtype", "remat"):
                continue
            value = getattr(self, f.name)
            if f.name in ("cls_dropout", "embedding_size") and value is None:
                continue
            d[f.name] = list(value) if f.name == "pos_att_type" else value
        return d

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rel_max_position(self) -> int:
        """max_relative_positions, or max_position_embeddings when unset (< 1), as in HF."""
        if self.max_relative_positions < 1:
            return self.max_position_embeddings
        return self.max_relative_positions

    @property
    def att_span(self) -> int:
        """Half the number of relative-embedding rows (`pos_ebd_size` in transformers)."""
        return self.position_buckets if self.position_buckets > 0 else self.rel_max_position


def make_log_bucket_position(
    rel_pos: np.ndarray, bucket_size: int, max_position: int
) -> np.ndarray:
    """Log-bucketed relative positions, in float32 exactly as transformers computes them."""
    rel_pos = np.asarray(rel_pos, np.int64)
    mid = bucket_size // 2
    abs_pos = np.where((rel_pos < mid) & (rel_pos > -mid), mid - 1, np.abs(rel_pos))
    ratio = abs_pos.astype(np.float32) / np.float32(mid)
    denom = np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(np.log(ratio) / denom * np.float32(mid - 1)) + np.float32(mid)
    bucket = np.where(abs_pos <= mid, rel_pos.astype(np.float32), log_pos * np.sign(rel_pos))
    return bucket.astype(np.int64)


def build_relative_position(
    query_size: int, key_size: int, bucket_size: int = -1, max_position: int = -1
) -> np.ndarray:
    """(query_size, key_size) int64 table of (bucketed) relative positions q - k."""
    rel = np.arange(query_size)[:, None] - np.arange(key_size)[None, :]
    if bucket_size > 0 and max_position > 0:
        rel = make_log_bucket_position(rel, bucket_size, max_position)
    return rel.astype(np.int64)


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
        scale_factor = 1 + sum(t in cfg.pos_att_type for t in _POS_ATT_TYPES)
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
        return _ACTIVATIONS[self.config.hidden_act](x)


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
        return _ACTIVATIONS[cfg.pooler_hidden_act](x)


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
