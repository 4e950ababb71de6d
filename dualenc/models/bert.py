"""BERT (and MiniLM, which is a BERT) in Flax Linen, numerically equal to transformers' `BertModel`.

Submodule names mirror the Hugging Face state-dict names (`embeddings/word_embeddings`,
`encoder/layer/0/attention/self/query`, `pooler/dense`, ...) so that `dualenc.models.convert` maps
weights both ways mechanically.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dualenc.models import target
from dualenc.models.attention import Segments, attention
from dualenc.models.dropout import Dropout
from dualenc.models.layers import Dense, LayerNorm, maybe_remat

ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),  # HF 'gelu' is the exact erf form
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_fast": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}
DTYPES = ("float32", "bfloat16", "float16")
# Fields that are ours, not transformers' config.json keys.
_LOCAL_FIELDS = ("dtype", "param_dtype", "remat", "add_pooling_layer")


def check_common(cfg: Any) -> None:
    """Validation shared by the architecture configs: heads divide width, known names."""
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"hidden_size {cfg.hidden_size} is not a multiple of "
            f"num_attention_heads {cfg.num_attention_heads}"
        )
    for name in ("dtype", "param_dtype"):
        if getattr(cfg, name) not in DTYPES:
            raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(cfg, name)!r}")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters; defaults follow transformers' `BertConfig` (bert-base)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    add_pooling_layer: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = False  # or a `layers.REMAT_POLICIES` name

    def __post_init__(self):
        check_common(self)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(ACTIVATIONS)}"
            )

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides: Any) -> BertConfig:
        """Builds the config from a transformers config.json dict (unknown keys are ignored)."""
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"BertConfig needs model_type 'bert', got {model_type!r}")
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type {pos_type!r} unsupported (only 'absolute')")
        names = {f.name for f in dataclasses.fields(cls)} - set(_LOCAL_FIELDS)
        kwargs = {k: d[k] for k in names if k in d}
        return cls(**{**kwargs, **overrides})

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that `transformers.BertConfig(**d)` / AutoConfig loads."""
        d: dict[str, Any] = {"model_type": "bert", "position_embedding_type": "absolute"}
        for f in dataclasses.fields(self):
            if f.name not in _LOCAL_FIELDS:
                d[f.name] = getattr(self, f.name)
        return d

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# ----------------------------------------------------------------------------- building blocks


def dtypes(cfg: Any) -> dict[str, Any]:
    """Flax dtype kwargs: `dtype` is the compute dtype, `param_dtype` the stored one."""
    return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


def dense(cfg: Any, features: int, name: str) -> Dense:
    init = nn.initializers.normal(cfg.initializer_range)
    return Dense(features, kernel_init=init, name=name, **dtypes(cfg))


def embed(cfg: Any, num: int, features: int, name: str, pad: int | None = None) -> nn.Embed:
    normal = nn.initializers.normal(cfg.initializer_range)

    def init(key, shape, dtype=jnp.float32):
        table = normal(key, shape, dtype)
        return table if pad is None else table.at[pad].set(0)  # HF zeroes the padding_idx row

    return nn.Embed(num, features, embedding_init=init, name=name, **dtypes(cfg))


def layer_norm(cfg: Any, name: str = "LayerNorm", eps: float | None = None) -> LayerNorm:
    # Two-pass variance: the fast E[x²]-E[x]² form loses ~1e-6 against PyTorch.
    eps = cfg.layer_norm_eps if eps is None else eps
    return LayerNorm(epsilon=eps, name=name, **dtypes(cfg))


def segment_positions(segment_ids):
    """(B, L) contiguous segment ids → (B, L) positions restarting at 0 in each segment."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, L, L)
    before = jnp.tril(same, k=-1)  # earlier tokens of the same segment
    return jnp.sum(before, axis=-1).astype(jnp.int32)


def packed_inputs(attention_mask, segment_ids, position_ids):
    """The (mask, position_ids) a tower uses: padded rows as given, packed rows block-diagonal."""
    if segment_ids is None:
        return attention_mask, position_ids
    if position_ids is None:
        position_ids = segment_positions(segment_ids)
    return Segments(segment_ids), position_ids


def split_heads(x, num_heads: int):
    """(B, L, H) → (B, L, N, D)."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


# ----------------------------------------------------------------------------- modules


class BertEmbeddings(nn.Module):
    """word + token type + absolute position embeddings → LayerNorm → dropout."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool, position_ids=None):
        cfg = self.config
        seq_len = input_ids.shape[-1]
        if seq_len > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} > max_position_embeddings {cfg.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = embed(cfg, cfg.vocab_size, cfg.hidden_size, "word_embeddings", cfg.pad_token_id)(
            input_ids
        )
        x = x + embed(cfg, cfg.type_vocab_size, cfg.hidden_size, "token_type_embeddings")(
            token_type_ids
        )
        pos = embed(cfg, cfg.max_position_embeddings, cfg.hidden_size, "position_embeddings")
        if position_ids is None:
            position_ids = jnp.arange(seq_len)[None, :]
        x = x + pos(position_ids)  # (B, L, H)
        x = layer_norm(cfg)(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention (HF `attention.self`: query / key / value)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        heads = cfg.num_attention_heads
        q = split_heads(dense(cfg, cfg.hidden_size, "query")(x), heads)  # (B, L, N, D)
        k = split_heads(dense(cfg, cfg.hidden_size, "key")(x), heads)
        v = split_heads(dense(cfg, cfg.hidden_size, "value")(x), heads)
        drop = Dropout(cfg.attention_probs_dropout_prob)
        ctx = attention(q, k, v, mask, drop, deterministic)  # (B, L, N, D)
        return ctx.reshape(x.shape)


class BertResidualOutput(nn.Module):
    """dense → dropout → LayerNorm(· + residual) (HF `BertSelfOutput` / `BertOutput`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, "dense")(x)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return layer_norm(cfg)(x + residual)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        ctx = BertSelfAttention(self.config, name="self")(x, mask, deterministic)
        return BertResidualOutput(self.config, name="output")(ctx, x, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        x = dense(self.config, self.config.intermediate_size, "dense")(x)
        return ACTIVATIONS[self.config.hidden_act](x)


class BertLayer(nn.Module):
    """One transformer block: self-attention, then the feed-forward block (post-LN)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        x = BertAttention(self.config, name="attention")(x, mask, deterministic)
        h = BertIntermediate(self.config, name="intermediate")(x)
        return BertResidualOutput(self.config, name="output")(h, x, deterministic)


class LayerStack(nn.Module):
    """Holds blocks under names '0', '1', … so params mirror HF `encoder.layer.N`."""

    config: Any
    layer_cls: Any

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        # static_argnums counts `self` as 0: deterministic is argument 3.
        cls = maybe_remat(self.layer_cls, cfg.remat, static_argnums=(3,))
        x = target.keep_rows_split(x)
        for i in range(cfg.num_hidden_layers):
            x = target.keep_rows_split(cls(cfg, name=str(i))(x, mask, deterministic))
        return x


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        return LayerStack(self.config, BertLayer, name="layer")(x, mask, deterministic)


class BertPooler(nn.Module):
    """tanh(dense(hidden[:, 0])) (HF `BertPooler`); every token's for packed rows."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden, per_token: bool = False):
        x = hidden if per_token else hidden[:, 0]  # packed: pooling picks each text's first
        return jnp.tanh(dense(self.config, self.config.hidden_size, "dense")(x))


class BertModel(nn.Module):
    """BERT encoder → (hidden (B, L, H), pooled (B, H) or None without a pooling layer).

    Packed rows: `segment_ids` (B, L) (0 = padding, 1..S = text in the row) make attention
    block-diagonal and positions restart per text (or follow `position_ids`); pooled is then
    per token (B, L, H), and `pooling.pool_segments` picks each text's first.
    """

    config: BertConfig

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
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask, position_ids = packed_inputs(attention_mask, segment_ids, position_ids)
        x = BertEmbeddings(cfg, name="embeddings")(
            input_ids, token_type_ids, deterministic, position_ids
        )
        x = BertEncoder(cfg, name="encoder")(x, mask, deterministic)  # (B, L, H)
        pooled = None
        if cfg.add_pooling_layer:
            pooled = BertPooler(cfg, name="pooler")(x, per_token=segment_ids is not None)
        return x, pooled


class BertForSequenceClassification(nn.Module):
    """`bert` → pooler → dropout → `classifier`; returns logits (B, num_labels), as in HF."""

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        cfg = dataclasses.replace(self.config, add_pooling_layer=True)
        _, pooled = BertModel(cfg, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic
        )
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        x = Dropout(rate)(pooled, deterministic=deterministic)
        return dense(cfg, self.num_labels, "classifier")(x)
