"""T5 (encoder-decoder) for inference, equal to transformers' `T5ForConditionalGeneration`: the
query generator of GenQ (`dualenc.data.genq`, e.g. BeIR/query-gen-msmarco-t5-base-v1, doc2query).

Pure functions over a plain param tree whose paths mirror the HF state dict (`shared`,
`encoder/block/0/layer/0/SelfAttention/q`, `.../layer_norm`, `decoder/block/0/layer/1/
EncDecAttention/k`, ...), so `convert.params_from_state_dict` loads a checkpoint mechanically.
The decoder runs over a key/value cache of fixed size: `decode` with the whole target is the
teacher-forced forward, with one token at `start` it is a generation step, the same code both
ways. No dropout: nothing here trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dualenc.models.bert import ACTIVATIONS

NEG = jnp.finfo(jnp.float32).min


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # relu | gated-gelu | gated-silu | ...
    tie_word_embeddings: bool = True  # tied: the LM head is `shared`, outputs scaled by d^-1/2
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> T5Config:
        if d.get("model_type", "t5") != "t5":
            raise ValueError(f"T5Config needs model_type 't5', got {d.get('model_type')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: d[k] for k in names if d.get(k) is not None}
        kw.setdefault("num_decoder_layers", d.get("num_layers", cls.num_layers))
        cfg = cls(**kw)
        act = cfg.feed_forward_proj.split("-")[-1]
        if _act_name(cfg) not in ACTIVATIONS or len(cfg.feed_forward_proj.split("-")) > 2:
            raise ValueError(f"unsupported feed_forward_proj {cfg.feed_forward_proj!r} ({act})")
        return cfg

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")


def _act_name(cfg: T5Config) -> str:
    act = cfg.feed_forward_proj.split("-")[-1]
    return "gelu_new" if cfg.feed_forward_proj == "gated-gelu" else act


# ----------------------------------------------------------------------------- params


def param_shapes(cfg: T5Config, untied_head: bool = False) -> dict:
    """The param tree as ShapeDtypeStructs (the target of `convert.params_from_state_dict`)."""
    f32 = jnp.float32

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, f32)

    inner = cfg.num_heads * cfg.d_kv

    def attn(rel: bool):
        a = {n: {"kernel": s(cfg.d_model, inner)} for n in "qkv"}
        a["o"] = {"kernel": s(inner, cfg.d_model)}
        if rel:
            a["relative_attention_bias"] = {
                "embedding": s(cfg.relative_attention_num_buckets, cfg.num_heads)
            }
        return a

    ff = {"wo": {"kernel": s(cfg.d_ff, cfg.d_model)}}
    for n in ("wi_0", "wi_1") if cfg.gated else ("wi",):
        ff[n] = {"kernel": s(cfg.d_model, cfg.d_ff)}
    norm = {"scale": s(cfg.d_model)}

    def stack(n: int, decoder: bool):
        blocks = {}
        for i in range(n):
            layers = {"0": {"SelfAttention": attn(i == 0), "layer_norm": norm}}
            if decoder:
                layers["1"] = {"EncDecAttention": attn(False), "layer_norm": norm}
            layers[str(len(layers))] = {"DenseReluDense": ff, "layer_norm": norm}
            blocks[str(i)] = {"layer": layers}
        return {"block": blocks, "final_layer_norm": norm}

    out = {
        "shared": {"embedding": s(cfg.vocab_size, cfg.d_model)},
        "encoder": stack(cfg.num_layers, False),
        "decoder": stack(cfg.num_decoder_layers, True),
    }
    if untied_head:
        out["lm_head"] = {"kernel": s(cfg.d_model, cfg.vocab_size)}
    return out


# ----------------------------------------------------------------------------- layers


def rms_norm(x, p, eps: float):
    """T5LayerNorm: scale only, no mean subtraction, statistics in float32."""
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return p["scale"] * (x * jax.lax.rsqrt(var + eps))


def relative_bucket(rel, bidirectional: bool, num_buckets: int, max_distance: int):
    """Mesh TensorFlow's relative position buckets (transformers' `_relative_position_bucket`)."""
    out = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out = out + (rel > 0).astype(rel.dtype) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    exact = num_buckets // 2
    safe = jnp.maximum(rel, 1).astype(jnp.float32)  # log(0) is never selected
    large = exact + (
        jnp.log(safe / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).astype(rel.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return out + jnp.where(rel < exact, rel, large)


def position_bias(table, q_pos, k_pos, bidirectional: bool, cfg: T5Config):
    """(1, N, Lq, Lk) learned bias of each key's distance from each query."""
    rel = k_pos[None, :] - q_pos[:, None]
    b = relative_bucket(
        rel, bidirectional, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
    )
    return jnp.transpose(table[b], (2, 0, 1))[None]


def _heads(x, cfg: T5Config):
    return x.reshape(*x.shape[:-1], cfg.num_heads, cfg.d_kv).transpose(0, 2, 1, 3)  # (B,N,L,D)


def _mix(p, q, k, v, bias, cfg: T5Config):
    """softmax(q·k + bias) v (T5 does not scale by 1/√d) → output projection."""
    scores = jnp.einsum("bnqd,bnkd->bnqk", q, k).astype(jnp.float32) + bias
    ctx = jnp.einsum("bnqk,bnkd->bnqd", jax.nn.softmax(scores, axis=-1), v)
    b, _, lq, _ = ctx.shape
    return ctx.transpose(0, 2, 1, 3).reshape(b, lq, -1) @ p["o"]["kernel"]


def feed_forward(p, x, cfg: T5Config):
    act = ACTIVATIONS[_act_name(cfg)]
    if cfg.gated:
        h = act(x @ p["wi_0"]["kernel"]) * (x @ p["wi_1"]["kernel"])
    else:
        h = act(x @ p["wi"]["kernel"])
    return h @ p["wo"]["kernel"]


# ----------------------------------------------------------------------------- encoder / decoder


def encode(params, cfg: T5Config, input_ids, attention_mask):
    """(B, L) ids + mask → (B, L, d) encoder states."""
    x = params["shared"]["embedding"][input_ids]
    pos = jnp.arange(input_ids.shape[1])
    enc = params["encoder"]
    table = enc["block"]["0"]["layer"]["0"]["SelfAttention"]["relative_attention_bias"]
    bias = position_bias(table["embedding"], pos, pos, True, cfg)
    bias = bias + jnp.where(attention_mask[:, None, None, :] > 0, 0.0, NEG)
    for i in range(cfg.num_layers):
        lay = enc["block"][str(i)]["layer"]
        a = lay["0"]["SelfAttention"]
        h = rms_norm(x, lay["0"]["layer_norm"], cfg.layer_norm_epsilon)
        q, k, v = (_heads(h @ a[n]["kernel"], cfg) for n in "qkv")
        x = x + _mix(a, q, k, v, bias, cfg)
        h = rms_norm(x, lay["1"]["layer_norm"], cfg.layer_norm_epsilon)
        x = x + feed_forward(lay["1"]["DenseReluDense"], h, cfg)
    return rms_norm(x, enc["final_layer_norm"], cfg.layer_norm_epsilon)


def cross_kv(params, cfg: T5Config, enc_states) -> list:
    """Each decoder layer's cross-attention keys and values (B, N, Le, D), computed once."""
    out = []
    for i in range(cfg.num_decoder_layers):
        a = params["decoder"]["block"][str(i)]["layer"]["1"]["EncDecAttention"]
        out.append(tuple(_heads(enc_states @ a[n]["kernel"], cfg) for n in "kv"))
    return out


def empty_cache(cfg: T5Config, batch: int, length: int, dtype=jnp.float32) -> list:
    shape = (batch, cfg.num_heads, length, cfg.d_kv)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))] * cfg.num_decoder_layers


def decode(params, cfg: T5Config, ids, start, cache, cross, enc_mask):
    """Decoder over `ids` (B, Lq) at positions start..start+Lq-1 → ((B, Lq, vocab) float32
    logits, the cache with their keys/values written). Causal over the cache's positions."""
    dec = params["decoder"]
    x = params["shared"]["embedding"][ids]
    lq, lk = ids.shape[1], cache[0][0].shape[2]
    q_pos, k_pos = start + jnp.arange(lq), jnp.arange(lk)
    table = dec["block"]["0"]["layer"]["0"]["SelfAttention"]["relative_attention_bias"]
    self_bias = position_bias(table["embedding"], q_pos, k_pos, False, cfg)
    self_bias = self_bias + jnp.where(k_pos[None, :] <= q_pos[:, None], 0.0, NEG)[None, None]
    cross_bias = jnp.where(enc_mask[:, None, None, :] > 0, 0.0, NEG)
    new_cache = []
    for i in range(cfg.num_decoder_layers):
        lay = dec["block"][str(i)]["layer"]
        a = lay["0"]["SelfAttention"]
        h = rms_norm(x, lay["0"]["layer_norm"], cfg.layer_norm_epsilon)
        q, k, v = (_heads(h @ a[n]["kernel"], cfg) for n in "qkv")
        ck = jax.lax.dynamic_update_slice(
            cache[i][0], k.astype(cache[i][0].dtype), (0, 0, start, 0)
        )
        cv = jax.lax.dynamic_update_slice(
            cache[i][1], v.astype(cache[i][1].dtype), (0, 0, start, 0)
        )
        new_cache.append((ck, cv))
        x = x + _mix(a, q, ck, cv, self_bias, cfg)
        c = lay["1"]["EncDecAttention"]
        h = rms_norm(x, lay["1"]["layer_norm"], cfg.layer_norm_epsilon)
        x = x + _mix(c, _heads(h @ c["q"]["kernel"], cfg), *cross[i], cross_bias, cfg)
        h = rms_norm(x, lay["2"]["layer_norm"], cfg.layer_norm_epsilon)
        x = x + feed_forward(lay["2"]["DenseReluDense"], h, cfg)
    x = rms_norm(x, dec["final_layer_norm"], cfg.layer_norm_epsilon)
    if "lm_head" in params:
        logits = x @ params["lm_head"]["kernel"]
    else:
        emb = params["shared"]["embedding"]  # contracted on its minor axis: no transposed copy
        logits = jnp.einsum("bld,vd->blv", x * cfg.d_model**-0.5, emb)
    return logits.astype(jnp.float32), new_cache


def forward(params, cfg: T5Config, input_ids, attention_mask, decoder_input_ids):
    """Teacher-forced logits (B, Lt, vocab), as `T5ForConditionalGeneration(...).logits`."""
    enc = encode(params, cfg, input_ids, attention_mask)
    cache = empty_cache(cfg, input_ids.shape[0], decoder_input_ids.shape[1])
    logits, _ = decode(
        params, cfg, decoder_input_ids, 0, cache, cross_kv(params, cfg, enc), attention_mask
    )
    return logits
