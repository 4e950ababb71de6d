"""DistilBERT in Flax Linen, numerically equal to transformers' `DistilBertModel`.

Submodule names mirror the Hugging Face state-dict names (`embeddings/word_embeddings`,
`transformer/layer/0/attention/q_lin`, `.../sa_layer_norm`, `.../ffn/lin1`, ...), so that
`dualenc.models.convert` maps weights both ways. No token types, no pooler; LayerNorm eps 1e-12.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dualenc.models.attention import attention
from dualenc.models.bert import (
    ACTIVATIONS,
    LayerStack,
    check_common,
    dense,
    embed,
    layer_norm,
    packed_inputs,
    split_heads,
)
from dualenc.models.dropout import Dropout

_LOCAL_FIELDS = ("dtype", "param_dtype", "remat")
_EPS = 1e-12  # hard-coded in transformers' DistilBERT


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """DistilBERT hyper-parameters; names and defaults follow transformers' `DistilBertConfig`."""

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = False  # or a `layers.REMAT_POLICIES` name

    def __post_init__(self):
        check_common(self)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unsupported activation {self.activation!r}; known: {sorted(ACTIVATIONS)}"
            )

    # BERT-style aliases (transformers' attribute_map), used by shared code.
    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def layer_norm_eps(self) -> float:
        return _EPS

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides: Any) -> DistilBertConfig:
        """Builds the config from a transformers config.json dict (unknown keys are ignored)."""
        model_type = d.get("model_type", "distilbert")
        if model_type != "distilbert":
            raise ValueError(f"DistilBertConfig needs model_type 'distilbert', got {model_type!r}")
        names = {f.name for f in dataclasses.fields(cls)} - set(_LOCAL_FIELDS)
        kwargs = {k: d[k] for k in names if k in d}
        return cls(**{**kwargs, **overrides})

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that `transformers.DistilBertConfig(**d)` / AutoConfig loads."""
        d: dict[str, Any] = {"model_type": "distilbert"}
        for f in dataclasses.fields(self):
            if f.name not in _LOCAL_FIELDS:
                d[f.name] = getattr(self, f.name)
        return d


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """(n_pos, dim) fixed sin/cos position table, computed exactly as transformers does."""
    j = np.arange(dim)
    enc = np.arange(n_pos)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    out = np.zeros((n_pos, dim), np.float32)
    out[:, 0::2] = np.sin(enc[:, 0::2]).astype(np.float32)
    out[:, 1::2] = np.cos(enc[:, 1::2]).astype(np.float32)
    return out


class DistilBertEmbeddings(nn.Module):
    """word + position embeddings → LayerNorm → dropout."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, input_ids, deterministic: bool, position_ids=None):
        cfg = self.config
        seq_len = input_ids.shape[-1]
        if seq_len > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} > max_position_embeddings {cfg.max_position_embeddings}"
            )
        x = embed(cfg, cfg.vocab_size, cfg.dim, "word_embeddings", cfg.pad_token_id)(input_ids)
        if position_ids is None:
            position_ids = jnp.arange(seq_len)[None, :]
        if cfg.sinusoidal_pos_embds:
            x = x + FixedPositions(cfg, name="position_embeddings")(position_ids)
        else:
            pos = embed(cfg, cfg.max_position_embeddings, cfg.dim, "position_embeddings")
            x = x + pos(position_ids)  # (B, L, H)
        x = layer_norm(cfg)(x)
        return Dropout(cfg.dropout)(x, deterministic=deterministic)


class FixedPositions(nn.Module):
    """The frozen sin/cos table: a param (HF stores it) initialised to sinusoids, no gradient."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, position_ids):
        cfg = self.config
        n, dim = cfg.max_position_embeddings, cfg.dim
        table = self.param(
            "embedding",
            lambda _, shape, dtype: jnp.asarray(sinusoidal_table(*shape), dtype),
            (n, dim),
            jnp.dtype(cfg.param_dtype),
        )
        rows = jnp.take(jax.lax.stop_gradient(table), position_ids, axis=0)  # (B|1, L, H)
        return rows.astype(jnp.dtype(cfg.dtype))


class DistilBertSelfAttention(nn.Module):
    """q_lin / k_lin / v_lin → attention → out_lin (HF `attention`)."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        q = split_heads(dense(cfg, cfg.dim, "q_lin")(x), cfg.n_heads)  # (B, L, N, D)
        k = split_heads(dense(cfg, cfg.dim, "k_lin")(x), cfg.n_heads)
        v = split_heads(dense(cfg, cfg.dim, "v_lin")(x), cfg.n_heads)
        drop = Dropout(cfg.attention_dropout)
        ctx = attention(q, k, v, mask, drop, deterministic).reshape(x.shape)  # (B, L, H)
        return dense(cfg, cfg.dim, "out_lin")(ctx)


class DistilBertFFN(nn.Module):
    config: DistilBertConfig

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        x = ACTIVATIONS[cfg.activation](dense(cfg, cfg.hidden_dim, "lin1")(x))
        x = dense(cfg, cfg.dim, "lin2")(x)
        return Dropout(cfg.dropout)(x, deterministic=deterministic)


class DistilBertBlock(nn.Module):
    """attention → sa_layer_norm(· + x) → ffn → output_layer_norm(· + ·) (post-LN)."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        a = DistilBertSelfAttention(cfg, name="attention")(x, mask, deterministic)
        x = layer_norm(cfg, "sa_layer_norm")(a + x)
        h = DistilBertFFN(cfg, name="ffn")(x, deterministic)
        return layer_norm(cfg, "output_layer_norm")(h + x)


class DistilBertTransformer(nn.Module):
    config: DistilBertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        return LayerStack(self.config, DistilBertBlock, name="layer")(x, mask, deterministic)


class DistilBertModel(nn.Module):
    """DistilBERT encoder → (hidden (B, L, H), None): no pooler, token types are ignored.

    Packed rows (`segment_ids`, `position_ids`) as `bert.BertModel`.
    """

    config: DistilBertConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        deterministic=True,
        segment_ids=None,
        position_ids=None,
    ):
        del token_type_ids  # DistilBERT has no segment embeddings
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask, position_ids = packed_inputs(attention_mask, segment_ids, position_ids)
        x = DistilBertEmbeddings(self.config, name="embeddings")(
            input_ids, deterministic, position_ids
        )
        x = DistilBertTransformer(self.config, name="transformer")(x, mask, deterministic)
        return x, None


class DistilBertForSequenceClassification(nn.Module):
    """hidden[:, 0] → pre_classifier → ReLU → dropout → classifier, as transformers."""

    config: DistilBertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        cfg = self.config
        hidden, _ = DistilBertModel(cfg, name="distilbert")(
            input_ids, attention_mask, token_type_ids, deterministic
        )
        x = nn.relu(dense(cfg, cfg.dim, "pre_classifier")(hidden[:, 0]))  # (B, H)
        x = Dropout(cfg.seq_classif_dropout)(x, deterministic=deterministic)
        return dense(cfg, self.num_labels, "classifier")(x)
