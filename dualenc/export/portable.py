"""Portable export of bi-encoders and cross-encoders: ONNX, or a serialized `jax.export` (the
library behind `python -m dualenc.export`; the ONNX graph is built by `export.onnx`).

The model is a sentence-transformers / Hugging Face encoder dir (bi-encoder: embeddings, with
its pooling and normalisation) or a transformers `*ForSequenceClassification` dir
(cross-encoder: logits). OUT holds model.onnx or model.jax, tokenizer.json and manifest.json
(inputs, outputs, pooling, normalize, max_length). Neither needs dualenc's model code to run:
onnxruntime, or `jax.export.deserialize(bytes).call(ids, mask[, types])`
(`dualenc.export.runtime.load_onnx` / `load_jax` wrap both). Batch and length are dynamic.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import tokenizers

from dualenc import multihost
from dualenc.export.runtime import JAX_FILE, MANIFEST, ONNX_FILE
from dualenc.io import InputError, atomic_dir
from dualenc.models import kernels, loading
from dualenc.models.dual_encoder import embed
from dualenc.tokenization import pad_id

FORMATS = ("onnx", "jax")
KINDS = ("auto", "bi", "cross")
DEFAULT_PLATFORMS = ("cpu", "cuda")
SYMBOLIC_LENGTH_ARCHS = ("bert", "distilbert")  # others export with length fixed at max_length


@dataclasses.dataclass
class Exportable:
    """What an exporter needs: architecture, params, recipe, tokenizer, and a jax forward."""

    kind: str  # 'bi' (embeddings) | 'cross' (logits)
    arch: str
    config: Any
    params: Any
    tokenizer: tokenizers.Tokenizer
    max_length: int
    source: str
    pooling: str | None = None
    normalize: bool = False
    num_labels: int = 0
    uses_types: bool = False
    forward: Callable | None = None  # (ids, mask[, types]) -> (B, D) | (B, num_labels)

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_types else [])

    @property
    def output(self) -> tuple[str, int]:
        if self.kind == "cross":
            return "logits", self.num_labels
        return "embeddings", int(self.config.hidden_size)


def detect_kind(root: Path) -> str:
    """'cross' for a transformers *ForSequenceClassification dir, else 'bi'."""
    if (root / "modules.json").exists() or not (root / "config.json").exists():
        return "bi"
    cfg = loading.read_json(root / "config.json", what="config.json (the model config)")
    archs = cfg.get("architectures") or []
    return "cross" if any(str(a).endswith("ForSequenceClassification") for a in archs) else "bi"


def load_exportable(model: str | Path, *, kind: str = "auto", max_length: int | None = None):
    """Loads a bi-encoder (dualenc.models.loading) or a cross-encoder (dualenc.inference.rerank)."""
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; expected one of {list(KINDS)}", field="kind")
    root = loading.resolve_model_dir(model)
    kind = detect_kind(root) if kind == "auto" else kind
    if kind == "cross":
        from dualenc.inference.rerank import load_reranker

        rr = load_reranker(root, max_length=max_length)
        ce, params = rr.ce, rr.params
        uses_types = ce.spec.uses_token_types

        def cross_forward(ids, mask, types=None):
            return ce.score(params, ids, mask, types)

        return Exportable(
            "cross", ce.arch, ce.config, params, rr.tokenizer, rr.max_length, str(model),
            num_labels=ce.num_labels, uses_types=uses_types, forward=cross_forward,
        )  # fmt: skip
    enc = loading.load_encoder(root, max_length=max_length)
    spec, params = enc.spec, enc.params

    def bi_forward(ids, mask):
        return embed(spec, params, ids, mask)

    return Exportable(
        "bi", enc.arch, enc.config, params, enc.tokenizer, enc.max_length, str(model),
        pooling=enc.pooling, normalize=enc.normalize, forward=bi_forward,
    )  # fmt: skip


def manifest(m: Exportable, fmt: str, **extra) -> dict:
    """What a caller needs to feed and read the exported model."""
    int_dtype = "int64" if fmt == "onnx" else "int32"
    out_name, width = m.output
    seq = extra.get("fixed_length", "sequence")
    return {
        "format": fmt,
        "kind": m.kind,
        "arch": m.arch,
        "inputs": [{"name": n, "dtype": int_dtype, "shape": ["batch", seq]} for n in m.input_names],
        "outputs": [{"name": out_name, "dtype": "float32", "shape": ["batch", width]}],
        "pooling": m.pooling,
        "normalize": bool(m.normalize),
        "num_labels": m.num_labels,
        "max_length": int(m.max_length),
        "pad_id": pad_id(m.tokenizer),
        "source": m.source,
        **extra,
    }


def _write(out_dir, m: Exportable, fmt: str, model_file: str, write_model, extra: dict) -> Path:
    def write() -> None:
        with atomic_dir(out_dir) as tmp:
            write_model(tmp / model_file)
            m.tokenizer.save(str(tmp / "tokenizer.json"))
            text = json.dumps(manifest(m, fmt, **extra), indent=2) + "\n"
            (tmp / MANIFEST).write_text(text, encoding="utf-8")

    multihost.write_on_main(write, barrier_name=f"export:{fmt}")
    return Path(out_dir)


def export_onnx(m: Exportable, out_dir) -> Path:
    """Writes model.onnx (pooling + normalisation or the classifier head inside the graph)."""
    from dualenc.export import onnx as eo

    try:
        eo.check_arch(m.arch)
    except ValueError as e:
        raise InputError(str(e), path=m.source, field="model_type") from None
    meta = {"kind": m.kind, "pooling": m.pooling, "normalize": m.normalize, "source": m.source}
    model = eo.build(
        m.arch, m.config, multihost.to_host(m.params), kind=m.kind, pooling=m.pooling or "cls",
        normalize=m.normalize, uses_types=m.uses_types, metadata=meta,
    )  # fmt: skip
    return _write(out_dir, m, "onnx", ONNX_FILE, lambda p: eo.save(model, p), {"opset": eo.OPSET})


def export_jax(m: Exportable, out_dir, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> Path:
    """Writes model.jax: the jitted forward with symbolic (batch, length), weights as constants."""
    limit = int(getattr(m.config, "max_position_embeddings", m.max_length) or m.max_length)
    if m.arch in SYMBOLIC_LENGTH_ARCHS:
        b, length = jax.export.symbolic_shape("b, l", constraints=(f"l <= {limit}",))
    else:  # DeBERTa builds its relative-position tables in numpy at trace time: fixed length
        (b,), length = jax.export.symbolic_shape("b"), int(m.max_length)
    args = [jax.ShapeDtypeStruct((b, length), jnp.int32) for _ in m.input_names]
    try:
        with kernels.disabled():  # the artifact must not call dualenc's native kernels
            exported = jax.export.export(jax.jit(m.forward), platforms=tuple(platforms))(*args)
    except Exception as e:  # noqa: BLE001 - a model jax.export cannot trace symbolically
        raise InputError(f"jax.export failed for {m.arch!r}: {e}", path=m.source) from None
    blob = exported.serialize()
    extra = {"platforms": list(platforms), "max_positions": limit}
    if isinstance(length, int):
        extra["fixed_length"] = length  # inputs must be padded to exactly this length
    return _write(out_dir, m, "jax", JAX_FILE, lambda p: p.write_bytes(blob), extra)


def export(
    model: str | Path,
    fmt: str,
    out_dir,
    *,
    kind: str = "auto",
    max_length: int | None = None,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> Path:
    """Loads `model` and writes the `fmt` export to `out_dir` (atomically, on process 0)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}", field="format")
    m = load_exportable(model, kind=kind, max_length=max_length)
    if fmt == "onnx":
        return export_onnx(m, out_dir)
    return export_jax(m, out_dir, platforms)
