"""Exact search over embedding shards: memory-mapped shards streamed through the jitted top-k,
per-host top-k lists merged exactly.

Why: `ExactIndex` places the whole (N, D) matrix on the devices of every host; at 8.8M x 768 that
is 27 GB per host. Here each host scans only its own shards (`inference.shards`, the contiguous
rows it encoded), one shard at a time: the shard (memory-mapped) goes to this host's devices,
`ShardedScan` (the same kernel and tie rule as `ExactIndex`) returns its top k, and a running
merge keeps the best k with global row numbers. Then the hosts exchange their (Q, k) lists (a few
KB; `multihost.allgather`) and merge them in host order. Merges keep the earlier list first on
equal scores, and earlier lists hold lower rows, so ties resolve to the lower corpus row: the
result is the one host's run, on any number of hosts.
"""

from __future__ import annotations

import jax
import numpy as np

from dualenc import multihost
from dualenc.index.base import (
    IndexManifest,
    check_queries,
    check_similarity,
    l2_normalize,
    truncate,
)
from dualenc.index.exact import ShardedScan, describe_exact, dot_scores


def merge_top_k(
    s_a: np.ndarray, i_a: np.ndarray, s_b: np.ndarray, i_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top k of two (Q, *) candidate lists; a's entries win ties (they hold lower rows)."""
    s = np.concatenate([s_a, s_b], axis=1)
    i = np.concatenate([i_a, i_b], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


class ShardedExactIndex:
    """Brute-force inner-product (or cosine) search over `EmbeddingShards`; every process calls
    `search` with the same queries and gets the same (global) result."""

    kind = "exact"
    inputs = "vector"

    def __init__(
        self,
        shards,
        manifest: IndexManifest | None = None,
        *,
        similarity: str = "dot",
        truncate_dim: int = 0,
        chunk_size: int = 16384,
        query_batch: int = 1024,
        devices=None,
    ):
        check_similarity(similarity)
        self.shards = shards
        self.manifest = manifest or IndexManifest(kind="exact", count=shards.count)
        self.similarity, self.truncate_dim = similarity, int(truncate_dim)
        describe_exact(
            self.manifest,
            shards.count,
            shards.dim,
            "float32",
            similarity,
            truncate_dim,
            chunk_size,
            query_batch,
        )
        self.devices = list(devices if devices is not None else jax.local_devices())
        self.chunk_size, self.query_batch = chunk_size, query_batch

    def memory(self) -> dict[str, int]:
        """Bytes of the searched vectors (mapped, not resident), and the same in float32."""
        width = self.truncate_dim or self.shards.dim
        return {
            "index_bytes": self.shards.count * width * 4,
            "float32_bytes": width * 4 * self.shards.count,
        }

    def _rows(self, arr: np.ndarray) -> np.ndarray:
        p = truncate(np.asarray(arr, np.float32), self.truncate_dim, self.manifest.normalize)
        return l2_normalize(p) if self.similarity == "cos" else p

    def search_local(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This host's top k over its own shards: (Q, k) scores and global rows, padded with
        (-inf, -1) where the host holds fewer than k rows."""
        s_run = np.full((q.shape[0], k), -np.inf, np.float32)
        i_run = np.full((q.shape[0], k), -1, np.int64)
        for start, arr in self.shards.local_arrays():
            scan = ShardedScan(
                self._rows(arr),
                dot_scores,
                chunk_size=self.chunk_size,
                query_batch=self.query_batch,
                devices=self.devices,
            )
            s, i = scan.search(q, k)
            s_run, i_run = merge_top_k(s_run, i_run, s, i + start, k)
        return s_run, i_run

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, D) -> (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N)."""
        q = check_queries(q, self.manifest)
        q = truncate(q, self.truncate_dim, self.manifest.normalize)
        if self.similarity == "cos":
            q = l2_normalize(q)
        k = min(int(k), self.shards.count)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        s, i = self.search_local(q, k)
        multihost.wait_all("sharded_search")  # hosts finish their shards far apart
        all_s, all_i = multihost.allgather(s), multihost.allgather(i)  # (hosts, Q, k)
        s, i = all_s[0], all_i[0]
        for h in range(1, all_s.shape[0]):  # host order = row order
            s, i = merge_top_k(s, i, all_s[h], all_i[h], k)
        return s.astype(np.float32), i.astype(np.int64)

    def to_exact(self):
        """The in-memory `ExactIndex` of the same vectors (needs every shard visible)."""
        from dualenc.index.exact import ExactIndex  # noqa: PLC0415

        return ExactIndex(
            self.shards.to_array(),
            self.manifest,
            similarity=self.similarity,
            truncate_dim=self.truncate_dim,
            chunk_size=self.chunk_size,
            query_batch=self.query_batch,
        )

    def save(self, directory) -> None:
        """Writes the in-memory index format (embeddings.npy + manifest.json)."""
        self.to_exact().save(directory)
