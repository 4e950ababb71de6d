"""Compressed indexes with rescoring: int8 or binary first stage, float query rescores the top.

The sentence-transformers recipe (`semantic_search_faiss(..., rescore_multiplier=...)`): search
the compressed corpus (int8 codes against the int8-quantised query, or sign bits against the
query's signs, i.e. Hamming distance) for the top `rescore_multiplier * k` rows, then rescore
those candidates with the float32 query against a finer copy of their vectors and keep the best
k. `rescore_with` picks that copy: '' the index's own codes (int8 dequantised; for binary the
+-1 signs, sentence-transformers' rescore), 'int8' a separate int8 copy (binary index), or
'float' the float32 vectors. A separate copy is only read at the candidate rows (memory-mapped
when loaded), so it can stay on disk. `rescore_multiplier=0` returns first-stage scores.

The first stage is `exact.ShardedScan`: jitted, sharded over all devices, ties to the lower row.
`truncate_dim` (Matryoshka) keeps the first d dims before anything else, renormalised when the
model's vectors are unit-norm.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from dualenc.index import quantize as qz
from dualenc.index.base import (
    IndexManifest,
    check_corpus,
    check_queries,
    check_similarity,
    l2_normalize,
    read_manifest,
    truncate,
    write_manifest,
)
from dualenc.index.exact import ShardedScan
from dualenc.io import InputError

PRECISIONS = ("int8", "binary")
RESCORE_WITH = ("", "int8", "float")
CODES, RANGES, RESCORE = "codes.npy", "ranges.npz", "rescore.npy"
RESCORE_ELEMENTS = 1 << 24  # candidates x dims rescored per host batch (64 MiB of float32)


def check_options(
    precision: str, rescore_multiplier, rescore_with: str, truncate_dim, calibration_size=1
) -> None:
    """Raises InputError naming the first bad option (the eval config's key names)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: one of {PRECISIONS}", field="quantize")
    if rescore_with not in RESCORE_WITH:
        raise InputError(
            f"must be one of {RESCORE_WITH}, got {rescore_with!r}", field="rescore_with"
        )
    for key, v, low in (
        ("rescore_multiplier", rescore_multiplier, 0),
        ("truncate_dim", truncate_dim, 0),
        ("calibration_size", calibration_size, 1),
    ):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise InputError(f"must be an integer ≥ {low}, got {v!r}", field=key)


class QuantizedIndex:
    """int8 or binary codes searched on device, candidates rescored in float32 on the host."""

    kind = "quantized"
    inputs = "vector"

    def __init__(self, codes, manifest: IndexManifest, ranges=None, rescore=None, *, devices=None):
        """From built parts (use `build` or `load`): codes (N, d) int8 or (N, ceil(d/8)) uint8,
        int8 `ranges` where int8 codes exist, `rescore` a separate (N, d) copy or None."""
        self.codes, self.manifest, self.ranges, self.rescore_store = (
            codes,
            manifest,
            ranges,
            rescore,
        )
        p = manifest.params
        self.precision, self.rescore_with = p["precision"], p["rescore_with"]
        self.multiplier, self.truncate_dim = int(p["rescore_multiplier"]), int(p["truncate_dim"])
        self.stored_dim = int(p["stored_dim"])
        score = qz.int8_scores if self.precision == "int8" else qz.sign_scores
        devices = list(devices if devices is not None else jax.devices())
        self.scan = ShardedScan(
            codes, score, chunk_size=p["chunk_size"], query_batch=p["query_batch"], devices=devices
        )

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        manifest: IndexManifest | None = None,
        *,
        precision: str = "int8",
        rescore_multiplier: int = 4,
        rescore_with: str = "",
        truncate_dim: int = 0,
        similarity: str = "dot",
        calibration_size: int = 10_000,
        seed: int = 0,
        chunk_size: int = 16384,
        query_batch: int = 1024,
        devices=None,
    ) -> QuantizedIndex:
        """Quantises (N, D) float embeddings; int8 ranges come from a seeded sample of
        `calibration_size` of them (all when fewer)."""
        check_options(precision, rescore_multiplier, rescore_with, truncate_dim, calibration_size)
        check_similarity(similarity)
        p = check_corpus(embeddings)
        m = manifest or IndexManifest(kind="quantized", count=p.shape[0])
        m.kind, m.similarity, m.count, m.dim = "quantized", similarity, p.shape[0], p.shape[1]
        p = _prepare(p, truncate_dim, m.normalize, similarity)
        ranges = None
        if precision == "int8" or rescore_with == "int8":
            ranges = qz.calibrate_int8(qz.calibration_sample(p, calibration_size, seed))
        codes = qz.quantize_int8(p, ranges) if precision == "int8" else qz.pack_bits(p)
        rescore = None
        if rescore_with == "float":
            rescore = p
        elif rescore_with == "int8" and precision == "binary":
            rescore = qz.quantize_int8(p, ranges)
        m.dtype = "int8" if precision == "int8" else "binary"
        m.params = {
            "precision": precision,
            "rescore_multiplier": int(rescore_multiplier),
            "rescore_with": rescore_with,
            "truncate_dim": int(truncate_dim),
            "stored_dim": int(p.shape[1]),
            "calibration_size": int(calibration_size),
            "chunk_size": chunk_size,
            "query_batch": query_batch,
        }
        return cls(codes, m, ranges, rescore, devices=devices)

    def memory(self) -> dict[str, int]:
        """Bytes searched on device (codes + int8 ranges), of the separate rescoring copy, and of
        the same vectors in float32."""
        ranges = self.ranges.nbytes if self.precision == "int8" else 0
        extra = 0 if self.rescore_store is None else int(self.rescore_store.nbytes)
        if extra and self.rescore_with == "int8":
            extra += self.ranges.nbytes
        return {
            "index_bytes": int(self.codes.nbytes) + ranges,
            "rescore_bytes": extra,
            "float32_bytes": self.manifest.count * self.stored_dim * 4,
        }

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, D) float -> (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N):
        rescored float scores, or first-stage scores when rescore_multiplier is 0."""
        q = check_queries(q, self.manifest)
        q = _prepare(q, self.truncate_dim, self.manifest.normalize, self.manifest.similarity)
        k = min(int(k), self.manifest.count)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q_codes = qz.quantize_int8(q, self.ranges) if self.precision == "int8" else qz.signs(q)
        depth = min(max(k, self.multiplier * k), self.manifest.count) if self.multiplier else k
        scores, rows = self.scan.search(q_codes, depth)
        if not self.multiplier:
            return scores, rows
        return self.rescore(q, rows, k)

    def rescore(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k of candidate `rows` (Q, m) by float32 q . vectors; ties to the lower row."""
        rows = np.sort(rows, axis=1)  # ties then resolve to the lower row, as in exact search
        per = max(1, RESCORE_ELEMENTS // max(1, rows.shape[1] * q.shape[1]))
        out_s, out_r = [], []
        for start in range(0, q.shape[0], per):
            r = rows[start : start + per]
            vecs = self.vectors(r.reshape(-1)).reshape(*r.shape, -1)  # (b, m, d)
            s = np.einsum("bd,bmd->bm", q[start : start + per], vecs)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            out_s.append(np.take_along_axis(s, order, 1))
            out_r.append(np.take_along_axis(r, order, 1))
        return np.concatenate(out_s).astype(np.float32), np.concatenate(out_r).astype(np.int64)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(n, d) float32 rescoring vectors of corpus `rows` (only those rows are read)."""
        if self.rescore_with == "float":
            return np.asarray(self.rescore_store[rows], np.float32)
        if self.rescore_with == "int8" and self.precision == "binary":
            return qz.dequantize_int8(np.asarray(self.rescore_store[rows]), self.ranges)
        if self.precision == "int8":
            return qz.dequantize_int8(self.codes[rows], self.ranges)
        return qz.unpack_signs(self.codes[rows], self.stored_dim)

    def save(self, directory: str | os.PathLike) -> None:
        """codes.npy, ranges.npz (int8 ranges), rescore.npy (a separate copy) and manifest.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / CODES, self.codes)
        if self.ranges is not None:
            np.savez(d / RANGES, starts=self.ranges.starts, steps=self.ranges.steps)
        if self.rescore_store is not None:
            np.save(d / RESCORE, np.asarray(self.rescore_store))
        write_manifest(d, self.manifest)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, weights_hash: str | None = None, devices=None
    ) -> QuantizedIndex:
        """Opens a saved index; the rescoring copy is memory-mapped (read at candidate rows)."""
        d = Path(directory)
        m = read_manifest(d, kind="quantized")
        m.check(weights_hash=weights_hash)
        codes = np.load(d / CODES)
        width = m.params["stored_dim"]
        if m.params["precision"] == "binary":
            width = -(-width // 8)
        if codes.shape != (m.count, width):
            raise ValueError(f"{d}: codes {codes.shape} disagree with the manifest")
        ranges = None
        if (d / RANGES).exists():
            with np.load(d / RANGES) as z:
                ranges = qz.Int8Ranges(z["starts"], z["steps"])
        rescore = np.load(d / RESCORE, mmap_mode="r") if (d / RESCORE).exists() else None
        return cls(codes, m, ranges, rescore, devices=devices)


def _prepare(x: np.ndarray, truncate_dim: int, normalize: bool, similarity: str) -> np.ndarray:
    """Truncated (renormalised for a normalising model) and, for cosine, unit-norm float32."""
    x = truncate(np.asarray(x, np.float32), truncate_dim, normalize)
    return l2_normalize(x) if similarity == "cos" else x
