"""The index interface, its on-disk manifest, and the `Run` type shared by all retrievers.

A dense index maps query vectors (Q, D) to the top-k corpus *row indices* with scores; mapping
rows to document ids is the caller's job (`rows_to_run`). Every saved index carries a manifest
naming the model (source + weights hash), so an index can never be searched with vectors from
another model without a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dualenc.io import InputError
from dualenc.runs import Run

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class IndexMismatchError(ValueError):
    """An index was opened with vectors or a model that it was not built from."""


@dataclasses.dataclass
class IndexManifest:
    """What an index was built from; written beside every saved index."""

    kind: str  # 'exact' | 'scann' | 'bm25'
    count: int
    dim: int = 0
    dtype: str = "float32"
    model_source: str = ""
    weights_hash: str = ""
    pooling: str = ""
    normalize: bool = False
    similarity: str = "dot"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    corpus_path: str = ""  # so `dualenc.search` can print titles and snippets
    max_length: int = 0
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any], *, path=None) -> IndexManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown manifest keys {unknown}", path=path)
        for key in ("kind", "count"):
            if key not in d:
                raise InputError("missing manifest key", path=path, field=key)
        return cls(**d)

    def check(self, *, weights_hash: str | None = None, dim: int | None = None) -> None:
        """Raises IndexMismatchError if the index was built with another model or width."""
        if weights_hash is not None and self.weights_hash and weights_hash != self.weights_hash:
            raise IndexMismatchError(
                f"index was built with model {self.model_source!r} (weights hash "
                f"{self.weights_hash[:12]}), not with the model given (hash {weights_hash[:12]}); "
                "rebuild the index or use the matching model"
            )
        if dim is not None and self.dim and dim != self.dim:
            raise IndexMismatchError(
                f"index holds {self.dim}-dim vectors but the queries are {dim}-dim"
            )


def write_manifest(directory: str | os.PathLike, manifest: IndexManifest) -> None:
    from dualenc.io import write_json

    write_json(Path(directory) / MANIFEST, manifest.to_json())


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> IndexManifest:
    """Reads `directory/manifest.json`; if `kind` is given, the index must be of that kind."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise InputError("not an index directory (manifest.json missing)", path=directory)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"malformed manifest ({e.msg})", path=path, line=e.lineno) from None
    m = IndexManifest.from_json(d, path=path)
    if kind is not None and m.kind != kind:
        raise IndexMismatchError(f"{directory} holds a {m.kind!r} index, not {kind!r}")
    return m


@runtime_checkable
class Index(Protocol):
    """An index: top-k corpus rows for each query, dense (exact, ScaNN) or lexical (BM25).

    `inputs` says what `search` takes: "vector" (a (Q, D) array) or "text" (Q strings).
    """

    manifest: IndexManifest
    inputs: str

    def search(self, q, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, D) vectors or Q texts -> (scores (Q, k) float32, rows (Q, k) int64), best first;
        rows < 0 are padding (nothing retrieved)."""
        ...

    def save(self, directory: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, directory: str | os.PathLike, *, weights_hash: str | None = None) -> Index:
        """Opens a saved index; a different `weights_hash` raises IndexMismatchError."""
        ...


def check_queries(q: np.ndarray, manifest: IndexManifest) -> np.ndarray:
    """Validates a (Q, D) query matrix against the index and returns it as float32."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"queries must be (Q, D), got shape {q.shape}")
    manifest.check(dim=q.shape[1])
    return q.astype(np.float32, copy=False)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): cosine similarity as a dot product."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def truncate(x: np.ndarray, dim: int, renormalize: bool) -> np.ndarray:
    """Matryoshka truncation: the first `dim` columns of (N, D) vectors (0 keeps all), scaled back
    to unit norm when the model's vectors are unit-norm (so dot stays cosine). A `dim` wider than
    the vectors is an error, not a silent no-op."""
    if not dim or dim == x.shape[-1]:
        return x
    if dim > x.shape[-1] or dim < 0:
        raise InputError(
            f"truncate_dim={dim} must be in 1..{x.shape[-1]} (the vectors' width)",
            field="truncate_dim",
        )
    x = np.ascontiguousarray(x[:, :dim])
    return l2_normalize(x) if renormalize else x


def check_corpus(p: np.ndarray) -> np.ndarray:
    """Validates a (N, D) corpus matrix: non-empty, 2-D, finite."""
    p = np.asarray(p)
    if p.ndim != 2:
        raise ValueError(f"corpus embeddings must be (N, D), got shape {p.shape}")
    if p.shape[0] == 0:
        raise InputError("empty corpus: nothing to index")
    if not np.isfinite(p).all():
        raise ValueError("corpus embeddings contain NaN or inf")
    return p.astype(np.float32, copy=False)


def check_doc_ids(doc_ids: list[str]) -> list[str]:
    """Doc ids must be unique strings: a duplicate would make run rows ambiguous."""
    seen: set[str] = set()
    for i, d in enumerate(doc_ids):
        if d in seen:
            raise InputError(f"duplicate doc id {d!r} (position {i})")
        seen.add(d)
    if not doc_ids:
        raise InputError("empty corpus: nothing to index")
    return list(doc_ids)


def rows_to_run(qids: list[str], scores: np.ndarray, rows: np.ndarray, doc_ids) -> Run:
    """Turns (Q, k) scores/rows into a Run, dropping padding rows (< 0); `doc_ids` is any
    sequence indexed by row (a `range` keeps the rows themselves)."""
    run: Run = {}
    for qid, s_row, r_row in zip(qids, scores, rows, strict=True):
        run[qid] = {doc_ids[r]: float(s) for s, r in zip(s_row, r_row, strict=True) if r >= 0}
    return run


def top_k_run(run: Run, k: int) -> Run:
    """Keeps the k best-scored docs of each query (stable on ties)."""
    return {q: dict(sorted(d.items(), key=lambda x: -x[1])[:k]) for q, d in run.items()}


def check_similarity(similarity: str) -> None:
    """A dense index scores by inner product ('dot') or cosine ('cos'); anything else is a bug."""
    if similarity not in ("dot", "cos"):
        raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
