"""BERT as a decoder with cross-attention, numerically equal to transformers' `BertLMHeadModel`
(config `is_decoder=True, add_cross_attention=True`): the decoder of TSDAE (`dualenc.tsdae`).

Each layer runs causal self-attention, then attention over the encoder states (for TSDAE one
sentence vector), then the feed-forward block; the LM head (`cls/predictions`) projects onto the
word embeddings (tied) plus a bias. Param names mirror the HF state dict (`bert/encoder/layer/0/
crossattention/self/query`, `cls/predictions/transform/dense`, ...), so `convert` maps them.

TSDAE ties the decoder to the encoder (sentence-transformers' `tie_encoder_decoder=True`): the
decoder's embeddings and self-attention/feed-forward weights are the encoder tower's; only the
cross-attention and the LM head are the decoder's own. `tied_params` builds the decoder's tree
from the two, so gradients from both uses reach the one copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dualenc.models.bert import (
    ACTIVATIONS,
    BertConfig,
    BertEmbeddings,
    BertIntermediate,
    BertResidualOutput,
    BertSelfAttention,
    dense,
    layer_norm,
    split_heads,
)
from dualenc.models.dropout import Dropout


class BertCrossAttention(nn.Module):
    """Queries from the decoder, keys/values from the encoder states (HF `crossattention.self`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, memory, memory_mask, deterministic: bool):
        cfg = self.config
        heads = cfg.num_attention_heads
        q = split_heads(dense(cfg, cfg.hidden_size, "query")(x), heads)  # (B, L, N, D)
        k = split_heads(dense(cfg, cfg.hidden_size, "key")(memory), heads)  # (B, M, N, D)
        v = split_heads(dense(cfg, cfg.hidden_size, "value")(memory), heads)
        # M is tiny (one sentence vector): plain ops, not the self-attention kernels
        scores = jnp.einsum("blnd,bmnd->bnlm", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
        scores = jnp.where(memory_mask[:, None, None, :] > 0, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bnlm,bmnd->blnd", probs.astype(v.dtype), v)
        return ctx.reshape(x.shape)


class _Attention(nn.Module):
    """HF `attention` / `crossattention`: (self or cross) attention + its residual output."""

    config: BertConfig
    cross: bool = False

    @nn.compact
    def __call__(self, x, mask, memory, memory_mask, deterministic: bool):
        cfg = self.config
        if self.cross:
            ctx = BertCrossAttention(cfg, name="self")(x, memory, memory_mask, deterministic)
        else:
            ctx = BertSelfAttention(cfg, name="self")(x, mask, deterministic)
        return BertResidualOutput(cfg, name="output")(ctx, x, deterministic)


class _Layer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, memory, memory_mask, deterministic: bool):
        cfg = self.config
        x = _Attention(cfg, name="attention")(x, mask, None, None, deterministic)
        x = _Attention(cfg, cross=True, name="crossattention")(
            x, None, memory, memory_mask, deterministic
        )
        h = BertIntermediate(cfg, name="intermediate")(x)
        return BertResidualOutput(cfg, name="output")(h, x, deterministic)


class _Stack(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, memory, memory_mask, deterministic: bool):
        for i in range(self.config.num_hidden_layers):
            x = _Layer(self.config, name=str(i))(x, mask, memory, memory_mask, deterministic)
        return x


class _Bert(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, memory, memory_mask, deterministic: bool):
        x = BertEmbeddings(self.config, name="embeddings")(input_ids, None, deterministic)
        length = input_ids.shape[1]
        causal = jnp.tril(jnp.ones((length, length), jnp.int32))[None]  # (1, L, L) query x key
        mask = causal * (attention_mask[:, None, :] > 0).astype(jnp.int32)  # (B, L, L)
        return _Encoder(self.config, name="encoder")(x, mask, memory, memory_mask, deterministic)


class _Encoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, memory, memory_mask, deterministic: bool):
        return _Stack(self.config, name="layer")(x, mask, memory, memory_mask, deterministic)


class BertLMHeadDecoder(nn.Module):
    """(B, L) target ids + (B, M, H) encoder states → (B, L, vocab) float32 next-token logits."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, memory, memory_mask, deterministic=True):
        cfg = self.config
        h = _Bert(cfg, name="bert")(input_ids, attention_mask, memory, memory_mask, deterministic)
        return _LMHead(cfg, name="cls")(h, self.variables["params"]["bert"])


class _LMHead(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h, bert_params):
        return _Predictions(self.config, name="predictions")(h, bert_params)


class _Predictions(nn.Module):
    """transform (dense → act → LayerNorm) → tied word-embedding projection + bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, h, bert_params):
        cfg = self.config
        h = _Transform(cfg, name="transform")(h)
        table = bert_params["embeddings"]["word_embeddings"]["embedding"]  # (V, H)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32)
        return jnp.einsum("blh,vh->blv", h, table.astype(h.dtype)).astype(jnp.float32) + bias


class _Transform(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        h = ACTIVATIONS[cfg.hidden_act](dense(cfg, cfg.hidden_size, "dense")(h))
        return layer_norm(cfg)(h)


# ----------------------------------------------------------------------------- tied params

DECODER_ONLY = ("crossattention",)  # per-layer subtrees the encoder does not have


def init_decoder(cfg: BertConfig, rng, length: int = 8) -> dict:
    """Random params of the whole decoder (HF's init: normal(0.02) kernels, zero biases)."""
    ids = jnp.zeros((1, length), jnp.int32)
    mem = jnp.zeros((1, 1, cfg.hidden_size), jnp.float32)
    return BertLMHeadDecoder(cfg).init(rng, ids, ids + 1, mem, jnp.ones((1, 1), jnp.int32))[
        "params"
    ]


def own_params(decoder_params: Mapping[str, Any]) -> dict:
    """The decoder's own params (cross-attention per layer, LM head): what is not tied."""
    layers = decoder_params["bert"]["encoder"]["layer"]
    return {
        "crossattention": {i: dict(layer["crossattention"]) for i, layer in layers.items()},
        "cls": decoder_params["cls"],
    }


def tied_params(tower: Mapping[str, Any], own: Mapping[str, Any]) -> dict:
    """The full decoder tree: the encoder tower's embeddings and layers (its pooler dropped) with
    the decoder's own cross-attention and LM head put in. Differentiable in both arguments."""
    layers = {
        i: {**layer, "crossattention": own["crossattention"][i]}
        for i, layer in tower["encoder"]["layer"].items()
    }
    bert = {"embeddings": tower["embeddings"], "encoder": {"layer": layers}}
    return {"bert": bert, "cls": own["cls"]}
