"""Running an exported model (dualenc.export) without dualenc's model code.

Only json, numpy, tokenizers and jax (or onnxruntime) are needed: `load_jax(dir)` deserialises
the `jax.export` artifact, `load_onnx(dir)` opens an onnxruntime session. Both return a callable
`(input_ids, attention_mask[, token_type_ids]) -> np.ndarray` (embeddings or logits) that can
also tokenize texts with the exported tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import tokenizers

MANIFEST = "manifest.json"
JAX_FILE = "model.jax"
ONNX_FILE = "model.onnx"


class Exported:
    """Common part: the manifest, the tokenizer, and tokenisation into padded arrays."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path}: not a dualenc export (no {MANIFEST})")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        self.input_names = [i["name"] for i in self.manifest["inputs"]]
        self._tok = None

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        if self._tok is None:
            tok = tokenizers.Tokenizer.from_file(str(self.root / "tokenizer.json"))
            tok.no_padding()
            tok.no_truncation()
            self._tok = tok
        return self._tok

    def tokenize(self, texts, pairs=None) -> list[np.ndarray]:
        """Texts (or text pairs) → the model's inputs, padded to the longest, truncated."""
        tok, m = self.tokenizer, self.manifest
        tok.enable_truncation(int(m["max_length"]), strategy="longest_first")
        fixed = m.get("fixed_length")  # a DeBERTa jax export takes one length only
        tok.enable_padding(pad_id=int(m["pad_id"]), length=int(fixed) if fixed else None)
        try:
            items = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
            encs = tok.encode_batch(items)
        finally:
            tok.no_truncation()
            tok.no_padding()
        arrays = {
            "input_ids": [e.ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
            "token_type_ids": [e.type_ids for e in encs],
        }
        return [np.asarray(arrays[n], np.int64) for n in self.input_names]

    def __call__(self, *arrays) -> np.ndarray:
        raise NotImplementedError

    def run_texts(self, texts, pairs=None) -> np.ndarray:
        """Embeddings (bi-encoder) or logits (cross-encoder) of texts / pairs, in one batch."""
        return self(*self.tokenize(texts, pairs))


class JaxExported(Exported):
    """A deserialised `jax.export.Exported`, called with int32 arrays."""

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.exported = jax.export.deserialize(bytearray((self.root / JAX_FILE).read_bytes()))

    def __call__(self, *arrays) -> np.ndarray:
        args = [np.asarray(a, np.int32) for a in arrays]
        return np.asarray(self.exported.call(*args))


class OnnxExported(Exported):
    """An onnxruntime session over model.onnx, called with int64 arrays."""

    def __init__(self, root: str | Path, providers=None):
        super().__init__(root)
        import onnxruntime as ort  # optional dependency (setup.py extra `export`)

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.root / ONNX_FILE), opts, providers=providers or ["CPUExecutionProvider"]
        )

    def __call__(self, *arrays) -> np.ndarray:
        feed = {n: np.asarray(a, np.int64) for n, a in zip(self.input_names, arrays, strict=True)}
        return self.session.run(None, feed)[0]


def load_jax(root: str | Path) -> JaxExported:
    """The callable of a `--format jax` export dir: f(ids, mask[, types]) -> np.ndarray."""
    return JaxExported(root)


def load_onnx(root: str | Path, providers=None) -> OnnxExported:
    """The callable of a `--format onnx` export dir (an onnxruntime session)."""
    return OnnxExported(root, providers)
