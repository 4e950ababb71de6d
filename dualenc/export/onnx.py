"""ONNX graphs built directly from dualenc's Flax params (BERT / MiniLM and DistilBERT).

No tracer: each op mirrors the Flax module it replaces (dualenc/models/bert.py, distilbert.py),
so the graph is small, readable and numerically the model's (erf GELU, two-pass LayerNorm,
masked keys set to float32 min before the softmax). Batch and sequence dims are symbolic;
pooling and L2 normalisation are inside the graph for bi-encoders, logits for cross-encoders.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # LayerNormalization (17); Reduce* take axes as an input (18)
ONNX_ARCHS = ("bert", "distilbert")
_F32_MIN = float(np.finfo(np.float32).min)
_DYN = ("batch", "sequence")


class _Graph:
    """Accumulates nodes and initializers; `op` returns the name of the node's output."""

    def __init__(self):
        self.nodes, self.inits, self._n, self._names = [], [], 0, set()

    def op(self, kind: str, inputs: list[str], **attrs) -> str:
        self._n += 1
        out = f"{kind.lower()}_{self._n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"n{self._n}", **attrs))
        return out

    def const(self, name: str, value, dtype=np.float32) -> str:
        """An initializer; shared constants ('c.*') are stored once under their name."""
        if name in self._names:
            return name
        self._names.add(name)
        self.inits.append(numpy_helper.from_array(np.array(value, dtype, order="C"), name))
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, np.int64), np.int64)


def _host(tree) -> Any:
    if isinstance(tree, dict):
        return {k: _host(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


def _dense(g: _Graph, x: str, p: dict, name: str) -> str:
    y = g.op("MatMul", [x, g.const(f"{name}.kernel", p["kernel"])])
    return g.op("Add", [y, g.const(f"{name}.bias", p["bias"])])


def _layer_norm(g: _Graph, x: str, p: dict, name: str, eps: float) -> str:
    scale, bias = g.const(f"{name}.scale", p["scale"]), g.const(f"{name}.bias", p["bias"])
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=float(eps))


def _activation(g: _Graph, x: str, kind: str) -> str:
    """The arch's hidden activation; 'gelu' is the exact erf form, as transformers' and ours."""
    if kind == "gelu":
        erf = g.op("Erf", [g.op("Mul", [x, g.const("c.inv_sqrt2", 1 / math.sqrt(2))])])
        half_x = g.op("Mul", [x, g.const("c.half", 0.5)])
        return g.op("Mul", [half_x, g.op("Add", [erf, g.const("c.one", 1.0)])])
    if kind in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const("c.gelu_k", 0.044715)])])
        t = g.op("Tanh", [g.op("Mul", [inner, g.const("c.sqrt_2_pi", math.sqrt(2 / math.pi))])])
        half_x = g.op("Mul", [x, g.const("c.half", 0.5)])
        return g.op("Mul", [half_x, g.op("Add", [t, g.const("c.one", 1.0)])])
    if kind == "relu":
        return g.op("Relu", [x])
    if kind in ("silu", "swish"):
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if kind == "tanh":
        return g.op("Tanh", [x])
    if kind == "linear":
        return x
    raise ValueError(f"activation {kind!r} has no ONNX form here")


def _attention(g: _Graph, x: str, keep: str, p: dict, names: tuple, cfg, prefix: str) -> str:
    """Multi-head self-attention → context (B, L, H), before the output projection."""
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    split = g.ints("c.split_heads", [0, 0, heads, head_dim])

    def project(key: str, perm: list[int]) -> str:
        y = g.op("Reshape", [_dense(g, x, p[key], f"{prefix}.{key}"), split])  # (B, L, N, D)
        return g.op("Transpose", [y], perm=perm)

    q = project(names[0], [0, 2, 1, 3])  # (B, N, L, D)
    k = project(names[1], [0, 2, 3, 1])  # (B, N, D, L)
    v = project(names[2], [0, 2, 1, 3])  # (B, N, L, D)
    scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const("c.scale", head_dim**-0.5)])
    scores = g.op("Where", [keep, scores, g.const("c.f32_min", _F32_MIN)])  # (B, N, L, L)
    probs = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])  # (B, L, N, D)
    return g.op("Reshape", [ctx, g.ints("c.merge_heads", [0, 0, cfg.hidden_size])])


def _positions(g: _Graph, ids: str, table: np.ndarray, name: str) -> str:
    """The first L rows of a position table, L = the input's (symbolic) sequence length."""
    seq_len = g.op("Shape", [ids], start=1, end=2)
    return g.op("Slice", [g.const(name, table), g.ints("c.zero1", [0]), seq_len])  # (L, H)


def _bert_body(g: _Graph, p: dict, cfg, ids: str, keep: str, types: str | None) -> str:
    emb = p["embeddings"]
    x = g.op("Gather", [g.const("word_embeddings", emb["word_embeddings"]["embedding"]), ids])
    x = g.op("Add", [x, _positions(g, ids, emb["position_embeddings"]["embedding"], "pos")])
    type_table = emb["token_type_embeddings"]["embedding"]
    if types is None:  # every token is segment 0
        x = g.op("Add", [x, g.const("token_type_0", type_table[0])])
    else:
        x = g.op("Add", [x, g.op("Gather", [g.const("token_type_embeddings", type_table), types])])
    x = _layer_norm(g, x, emb["LayerNorm"], "embeddings.LayerNorm", cfg.layer_norm_eps)
    eps = cfg.layer_norm_eps
    for i in range(cfg.num_hidden_layers):
        lp, pre = p["encoder"]["layer"][str(i)], f"layer{i}"
        att = lp["attention"]
        ctx = _attention(g, x, keep, att["self"], ("query", "key", "value"), cfg, pre)
        out = att["output"]
        y = g.op("Add", [_dense(g, ctx, out["dense"], f"{pre}.attn_out"), x])
        x = _layer_norm(g, y, out["LayerNorm"], f"{pre}.attn_ln", eps)
        h = _dense(g, x, lp["intermediate"]["dense"], f"{pre}.intermediate")
        h = _activation(g, h, cfg.hidden_act)
        y = g.op("Add", [_dense(g, h, lp["output"]["dense"], f"{pre}.out"), x])
        x = _layer_norm(g, y, lp["output"]["LayerNorm"], f"{pre}.out_ln", eps)
    return x  # (B, L, H)


def _distilbert_body(g: _Graph, p: dict, cfg, ids: str, keep: str) -> str:
    emb, eps = p["embeddings"], cfg.layer_norm_eps
    x = g.op("Gather", [g.const("word_embeddings", emb["word_embeddings"]["embedding"]), ids])
    x = g.op("Add", [x, _positions(g, ids, emb["position_embeddings"]["embedding"], "pos")])
    x = _layer_norm(g, x, emb["LayerNorm"], "embeddings.LayerNorm", eps)
    for i in range(cfg.n_layers):
        lp, pre = p["transformer"]["layer"][str(i)], f"layer{i}"
        att = lp["attention"]
        ctx = _attention(g, x, keep, att, ("q_lin", "k_lin", "v_lin"), cfg, pre)
        y = g.op("Add", [_dense(g, ctx, att["out_lin"], f"{pre}.out_lin"), x])
        x = _layer_norm(g, y, lp["sa_layer_norm"], f"{pre}.sa_ln", eps)
        h = _activation(g, _dense(g, x, lp["ffn"]["lin1"], f"{pre}.lin1"), cfg.activation)
        y = g.op("Add", [_dense(g, h, lp["ffn"]["lin2"], f"{pre}.lin2"), x])
        x = _layer_norm(g, y, lp["output_layer_norm"], f"{pre}.out_ln", eps)
    return x


def _first_token(g: _Graph, hidden: str) -> str:
    return g.op("Gather", [hidden, g.ints("c.zero", 0)], axis=1)  # (B, H)


def _pool(g: _Graph, hidden: str, mask: str, kind: str, p: dict) -> str:
    """(B, L, H) → (B, H), as dualenc.models.pooling.pool."""
    if kind == "cls":
        return _first_token(g, hidden)
    if kind == "pooler":
        if "pooler" not in p:
            raise ValueError("pooling 'pooler' needs a model with a pooling layer")
        return g.op("Tanh", [_dense(g, _first_token(g, hidden), p["pooler"]["dense"], "pooler")])
    maskf = g.op("Unsqueeze", [g.op("Cast", [mask], to=TensorProto.FLOAT), g.ints("c.ax2", [2])])
    axis1 = g.ints("c.ax1", [1])
    if kind == "mean":
        total = g.op("ReduceSum", [g.op("Mul", [hidden, maskf]), axis1], keepdims=0)
        count = g.op("ReduceSum", [maskf, axis1], keepdims=0)  # (B, 1)
        return g.op("Div", [total, g.op("Max", [count, g.const("c.tiny", 1e-9)])])
    if kind == "max":
        keep = g.op("Greater", [maskf, g.const("c.f0", 0.0)])
        masked = g.op("Where", [keep, hidden, g.const("c.neg_big", -1e9)])
        return g.op("ReduceMax", [masked, axis1], keepdims=0)
    raise ValueError(f"unknown pooling {kind!r}")


def _l2_normalize(g: _Graph, x: str, eps: float = 1e-12) -> str:
    sq = g.op("ReduceSum", [g.op("Mul", [x, x]), g.ints("c.axlast", [-1])], keepdims=1)
    norm = g.op("Sqrt", [g.op("Max", [sq, g.const("c.eps2", eps * eps)])])
    return g.op("Div", [x, norm])


def _io(name: str, elem: int, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(dims))


def check_arch(arch: str) -> None:
    """ValueError naming the architecture when it has no ONNX builder here."""
    if arch not in ONNX_ARCHS:
        raise ValueError(
            f"ONNX export supports {list(ONNX_ARCHS)}, not {arch!r} "
            "(use --format jax for this architecture)"
        )


def build(
    arch: str,
    config,
    params,
    *,
    kind: str,
    pooling: str = "cls",
    normalize: bool = False,
    uses_types: bool = False,
    metadata: dict | None = None,
) -> onnx.ModelProto:
    """The ONNX model of a bi-encoder ('bi': embeddings) or a cross-encoder ('cross': logits).

    Inputs are int64 (batch, sequence): input_ids, attention_mask [, token_type_ids].
    """
    check_arch(arch)
    p, g = _host(params), _Graph()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])
    inputs = [_io(n, TensorProto.INT64, _DYN) for n in names]
    keep = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)
    keep = g.op("Unsqueeze", [keep, g.ints("c.ax12", [1, 2])])  # (B, 1, 1, L)
    types = "token_type_ids" if uses_types else None
    if kind == "cross":
        base = p["bert" if arch == "bert" else "distilbert"]
    else:
        base = p
    if arch == "bert":
        hidden = _bert_body(g, base, config, "input_ids", keep, types)
    else:
        hidden = _distilbert_body(g, base, config, "input_ids", keep)
    if kind == "cross":
        out_name, out = "logits", _cross_head(g, arch, hidden, p, base)
    else:
        out_name = "embeddings"
        out = _pool(g, hidden, "attention_mask", pooling, base)
        if normalize:
            out = _l2_normalize(g, out)
    g.nodes.append(helper.make_node("Identity", [out], [out_name], name="output"))
    width = p["classifier"]["bias"].shape[0] if kind == "cross" else config.hidden_size
    graph = helper.make_graph(
        g.nodes,
        f"dualenc_{arch}_{kind}",
        inputs,
        [_io(out_name, TensorProto.FLOAT, ("batch", int(width)))],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dualenc"
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=str(key), value=str(value))
    return model


def _cross_head(g: _Graph, arch: str, hidden: str, p: dict, base: dict) -> str:
    """Logits (B, num_labels) as the arch's *ForSequenceClassification (eval mode)."""
    first = _first_token(g, hidden)
    if arch == "bert":
        x = g.op("Tanh", [_dense(g, first, base["pooler"]["dense"], "pooler")])
    else:
        x = g.op("Relu", [_dense(g, first, p["pre_classifier"], "pre_classifier")])
    return _dense(g, x, p["classifier"], "classifier")


def save(model: onnx.ModelProto, path) -> None:
    """Checks and writes the model; over ~1.8 GB the weights go to an external data file."""
    big = sum(len(t.raw_data) for t in model.graph.initializer) > 1_800_000_000
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
