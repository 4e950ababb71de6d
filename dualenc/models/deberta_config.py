"""DeBERTa-v2/v3 configuration and relative-position tables (numpy, as transformers builds them).

Kept apart from the Flax modules (`dualenc.models.deberta`, which re-exports these names) so the
model file stays readable; the config is also all that `dualenc.compile` needs of an architecture.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
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
POS_ATT_TYPES = ("c2p", "p2c")
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
            if act not in ACTIVATIONS:
                raise ValueError(f"unsupported activation {act!r}; known: {sorted(ACTIVATIONS)}")
        bad = [t for t in self.pos_att_type if t not in POS_ATT_TYPES]
        if bad:
            raise ValueError(f"unsupported pos_att_type {bad}; known: {list(POS_ATT_TYPES)}")
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
