"""ScaNN approximate index: tree partitioning + anisotropic hashing + exact reordering.

Defaults follow ScaNN's guidance: num_leaves ~ sqrt(n), search 10 % of the leaves, reorder the
top 100 (>= k) with exact scores; below `brute_force_below` vectors (default 20k) a tree does not
pay and the searcher is brute force. Every parameter can be overridden.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dualenc.index.base import (
    IndexManifest,
    check_corpus,
    check_queries,
    check_similarity,
    read_manifest,
    write_manifest,
)

SEARCHER_DIR = "scann"


def default_params(n: int, *, k: int = 10, **overrides: Any) -> dict[str, Any]:
    """ScaNN parameters for a corpus of n vectors; `overrides` (None = keep default) win."""
    leaves = max(2, int(round(math.sqrt(n))))
    p = {
        "brute_force": n < overrides.get("brute_force_below", 20_000) or 0,
        "num_leaves": min(leaves, n),
        "num_leaves_to_search": max(1, int(round(0.1 * leaves))),
        "training_sample_size": min(n, 250_000),
        "dims_per_block": 2,
        "anisotropic_quantization_threshold": 0.2,
        "reorder": max(100, k),
        "k": k,
    }
    p["brute_force"] = bool(p["brute_force"])
    p.update({key: v for key, v in overrides.items() if v is not None and key in p})
    return p


def _build(db: np.ndarray, params: dict[str, Any]):
    import scann

    b = scann.scann_ops_pybind.builder(db, params["k"], "dot_product")
    if params["brute_force"]:
        return b.score_brute_force().build()
    return (
        b.tree(
            num_leaves=params["num_leaves"],
            num_leaves_to_search=params["num_leaves_to_search"],
            training_sample_size=params["training_sample_size"],
        )
        .score_ah(
            params["dims_per_block"],
            anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"],
        )
        .reorder(params["reorder"])
        .build()
    )


class ScannIndex:
    """ScaNN searcher plus manifest. Cosine similarity = dot product on normalised vectors."""

    kind = "scann"
    inputs = "vector"

    def __init__(self, searcher, manifest: IndexManifest):
        self.searcher, self.manifest = searcher, manifest

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        manifest: IndexManifest | None = None,
        *,
        similarity: str = "dot",
        **params: Any,
    ) -> ScannIndex:
        p = check_corpus(embeddings)
        check_similarity(similarity)
        if similarity == "cos":
            p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        full = default_params(p.shape[0], **params)
        m = manifest or IndexManifest(kind="scann", count=p.shape[0])
        m.kind, m.similarity, m.count, m.dim, m.dtype = "scann", similarity, *p.shape, "float32"
        m.params = full
        return cls(_build(np.ascontiguousarray(p), full), m)

    def search(
        self,
        q: np.ndarray,
        k: int,
        *,
        leaves_to_search: int | None = None,
        reorder: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, D) -> (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N)."""
        q = check_queries(q, self.manifest)
        if self.manifest.similarity == "cos":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = min(int(k), self.manifest.count)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        kw: dict[str, Any] = {"final_num_neighbors": k}
        if not self.manifest.params.get("brute_force"):
            kw["pre_reorder_num_neighbors"] = max(k, reorder or self.manifest.params["reorder"])
            if leaves_to_search:
                kw["leaves_to_search"] = leaves_to_search
        rows, scores = self.searcher.search_batched_parallel(np.ascontiguousarray(q), **kw)
        rows = np.asarray(rows, np.int64)
        scores = np.asarray(scores, np.float32)
        if rows.shape[1] < k:  # ScaNN may return fewer; pad so shapes stay (Q, k)
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, rows

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        (d / SEARCHER_DIR).mkdir(parents=True, exist_ok=True)
        self.searcher.serialize(str(d / SEARCHER_DIR), relative_path=True)
        write_manifest(d, self.manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, weights_hash: str | None = None) -> ScannIndex:
        import scann

        m = read_manifest(directory, kind="scann")
        m.check(weights_hash=weights_hash)
        return cls(scann.scann_ops_pybind.load_searcher(str(Path(directory) / SEARCHER_DIR)), m)
