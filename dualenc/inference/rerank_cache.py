"""On-disk cache of cross-encoder relevance scores, so that a rerun rescoring the same run is free.

Layout: CACHE_DIR/rerank-<model hash>/ holds `model.json` (the full hash and the model source)
and `scores-<digest>.npz` files, each a batch of (pair key, score) written atomically by process 0
only. The model hash covers weights, tokenizer, architecture config and max_length
(`Reranker.model_hash`); a pair key is a 16-byte blake2b over (query id, doc id, query text, doc
text), so a changed text under the same ids is rescored, never served stale. CACHE_DIR is the
corpus cache's (`corpus_cache.resolve_cache_dir`: --cache_dir, $DUALENC_CACHE_DIR or
$XDG_CACHE_HOME/dualenc). An unreadable file is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dualenc import multihost
from dualenc.io import atomic_write, write_json

MODEL_FILE = "model.json"


def pair_key(qid: str, did: str, query: str, passage: str) -> bytes:
    """16-byte digest of one (query, doc) pair: ids and texts, length-prefixed."""
    h = hashlib.blake2b(digest_size=16)
    for s in (qid, did, query, passage):
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.digest()


class ScoreCache:
    """Relevance scores of one reranker under `cache_dir`; reads lazily, appends atomically."""

    def __init__(self, cache_dir: str | os.PathLike, reranker):
        self.model_hash = reranker.model_hash()
        self.source = str(reranker.source)
        self.dir = Path(cache_dir) / f"rerank-{self.model_hash[:24]}"
        self._scores: dict[bytes, float] | None = None

    def _load(self) -> dict[bytes, float]:
        if self._scores is not None:
            return self._scores
        self._scores = {}
        try:
            meta = json.loads((self.dir / MODEL_FILE).read_text())
        except (OSError, ValueError):
            return self._scores
        if meta.get("model_hash") != self.model_hash:
            return self._scores
        for f in sorted(self.dir.glob("scores-*.npz")):
            try:
                with np.load(f, allow_pickle=False) as z:
                    raw, scores = z["keys"].tobytes(), z["scores"].tolist()
                keys = [raw[16 * i : 16 * i + 16] for i in range(len(scores))]
                self._scores.update(zip(keys, scores, strict=True))
            except Exception as e:  # noqa: BLE001 - a broken entry is only a cache miss
                logging.warning("ignoring unreadable rerank cache file %s (%s)", f, e)
        return self._scores

    def lookup(
        self,
        keys: Sequence[tuple[str, str]],
        queries: Mapping[str, str],
        passages: Mapping[str, str],
        out: np.ndarray,
    ) -> np.ndarray:
        """Fills `out[i]` for cached pairs; returns the indices still to score.

        With several processes a pair missed on any host is scored on all (same shapes)."""
        cached = self._load()
        miss = np.ones(len(keys), bool)
        for i, (qid, did) in enumerate(keys):
            s = cached.get(pair_key(qid, did, queries[qid], passages[did]))
            if s is not None:
                out[i], miss[i] = s, False
        if jax.process_count() > 1:
            miss = np.asarray(multihost_utils.process_allgather(miss.astype(np.int32))).any(0)
        logging.info("rerank cache %s: %d of %d pairs cached", self.dir, (~miss).sum(), len(keys))
        return np.flatnonzero(miss)

    def store(
        self,
        keys: Sequence[tuple[str, str]],
        queries: Mapping[str, str],
        passages: Mapping[str, str],
        scores: np.ndarray,
    ) -> None:
        """Adds scored pairs (process 0 writes one new file, atomically; a failure only logs)."""
        digests = [pair_key(q, d, queries[q], passages[d]) for q, d in keys]
        self._load().update(zip(digests, np.asarray(scores, np.float32).tolist(), strict=True))
        if not multihost.is_main() or not digests:
            return
        arr = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16)  # (N, 16)
        name = hashlib.sha256(arr.tobytes()).hexdigest()[:20]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / MODEL_FILE).exists():
                write_json(
                    self.dir / MODEL_FILE, {"model_hash": self.model_hash, "source": self.source}
                )
            with atomic_write(self.dir / f"scores-{name}.npz", "wb") as f:
                np.savez(f, keys=arr, scores=np.asarray(scores, np.float32))
        except OSError as e:  # e.g. a read-only or full disk: carry on uncached
            logging.warning("could not write rerank cache %s: %s", self.dir, e)
