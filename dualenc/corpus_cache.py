"""On-disk cache of corpus embeddings, keyed and checked by a manifest.

An entry is reused only when everything that determines the vectors matches: model source and
weights hash, pooling, normalisation, max_length, and a fingerprint of the corpus (sha256 over ids
and texts). Anything else re-encodes; entries are written atomically, so a crash never leaves a
half-written cache that would be trusted later.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from dualenc.io import atomic_dir, write_json

EMBEDDINGS, MANIFEST = "embeddings.npy", "manifest.json"


def corpus_fingerprint(doc_ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 over (id, text) pairs, length-prefixed so that no two corpora collide by joining."""
    h = hashlib.sha256()
    for d, t in zip(doc_ids, texts, strict=True):
        for s in (d, t):
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def cache_manifest(
    encoder, doc_ids: Sequence[str], texts: Sequence[str], max_length: int
) -> dict[str, Any]:
    """The fields that determine the embeddings (dim/count/dtype are added on write)."""
    return {
        "model_source": str(encoder.source),
        "weights_hash": encoder.weights_hash(),
        "pooling": str(encoder.pooling),
        "normalize": bool(encoder.normalize),
        "max_length": int(max_length),
        "corpus_fingerprint": corpus_fingerprint(doc_ids, texts),
        "count": len(doc_ids),
    }


def _entry_dir(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"emb-{digest}"


def load_cached(cache_dir: str | os.PathLike, key: dict[str, Any]) -> np.ndarray | None:
    """The cached (N, D) array for `key`, or None when absent or when its manifest disagrees."""
    d = _entry_dir(Path(cache_dir), key)
    try:
        m = json.loads((d / MANIFEST).read_text())
        arr = np.load(d / EMBEDDINGS, mmap_mode=None)
    except (OSError, ValueError):
        return None
    if any(m.get(k) != v for k, v in key.items()):
        return None
    if arr.shape != (m.get("count"), m.get("dim")) or str(arr.dtype) != m.get("dtype"):
        return None
    return arr


def cached_embeddings(
    encoder,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None,
    max_length: int,
    encode_fn: Callable[[list[str]], np.ndarray],
) -> tuple[np.ndarray, bool]:
    """Returns (embeddings (N, D) float32, reused?) encoding with `encode_fn` on a miss."""
    if cache_dir is None:
        return np.asarray(encode_fn(list(texts)), np.float32), False
    key = cache_manifest(encoder, doc_ids, texts, max_length)
    hit = load_cached(cache_dir, key)
    if hit is not None:
        return hit, True
    emb = np.asarray(encode_fn(list(texts)), np.float32)
    if emb.shape[0] != len(doc_ids):
        raise ValueError(f"encoder returned {emb.shape[0]} vectors for {len(doc_ids)} texts")
    try:
        with atomic_dir(_entry_dir(Path(cache_dir), key)) as tmp:
            np.save(tmp / EMBEDDINGS, emb)
            write_json(tmp / MANIFEST, {**key, "dim": int(emb.shape[1]), "dtype": str(emb.dtype)})
    except OSError as e:  # e.g. another host swapped the same entry in first: only a cache
        logging.warning("could not write the embedding cache in %s: %s", cache_dir, e)
    return emb, False
