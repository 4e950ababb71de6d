"""Exact (brute-force) search: jitted matmul + `lax.top_k` over corpus chunks.

The corpus is padded and split into one contiguous block of rows per device; each device scans
its block chunk by chunk, keeping a running top-k, and the per-device results are merged with
one more top-k. Because blocks are contiguous and `lax.top_k` keeps the lower position first on
ties, equal scores always resolve to the lower corpus row, on any number of devices.

By default the mesh holds every device of every process: each host holds the whole corpus matrix
and contributes its devices' blocks; every process must call `search` with the same queries, and
all get the full result.

The scan itself (`ShardedScan`) takes any row format and score function: the float matmul here,
int8 codes and packed sign bits in `index.quantized`, so every dense index shares one tie rule.
`truncate_dim` keeps the first d dims of every vector (Matryoshka), renormalised when the
model's vectors are unit-norm (`manifest.normalize`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import multihost
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

EMBEDDINGS = "embeddings.npy"


__all__ = ["EMBEDDINGS", "ExactIndex", "ShardedScan", "dot_scores", "l2_normalize"]


def dot_scores(q, p):
    """(Q, D) float queries x (C, D) float rows -> (Q, C) inner products."""
    return q @ p.T


def _merge(s_a, i_a, s_b, i_b, k):
    """Top-k of two candidate lists; a's entries win ties (they hold lower rows)."""
    s = jnp.concatenate([s_a, s_b], axis=-1)
    i = jnp.concatenate([i_a, i_b], axis=-1)
    s, pos = jax.lax.top_k(s, k)
    return s, jnp.take_along_axis(i, pos, axis=-1)


@functools.lru_cache(maxsize=32)
def _search_fn(mesh: Mesh, k: int, chunk: int, block: int, count: int, score):
    """Compiled search for fixed (k, chunk, block rows per device, corpus count, score fn)."""
    n_chunks = block // chunk

    def local(q, p):  # q (Q, D) replicated; p (block, D) = this device's rows
        start = jax.lax.axis_index("x") * block
        p = p.reshape(n_chunks, chunk, p.shape[-1])

        def body(carry, c):
            s_run, i_run = carry
            s = score(q, p[c]).astype(jnp.float32)  # (Q, chunk)
            rows = start + c * chunk + jnp.arange(chunk, dtype=jnp.int32)
            s = jnp.where(rows[None, :] < count, s, -jnp.inf)
            s_c, pos = jax.lax.top_k(s, k)
            return _merge(s_run, i_run, s_c, rows[pos], k), None

        init = (
            jnp.full((q.shape[0], k), -jnp.inf, jnp.float32),
            jnp.full((q.shape[0], k), -1, jnp.int32),
        )
        (s, i), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
        return s[None], i[None]  # (1, Q, k) per device

    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P("x")), out_specs=(P("x"), P("x")), check_vma=False
    )

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def search(q, p):
        s, i = sharded(q, p)  # (ndev, Q, k), devices in row order
        s = jnp.transpose(s, (1, 0, 2)).reshape(q.shape[0], -1)
        i = jnp.transpose(i, (1, 0, 2)).reshape(q.shape[0], -1)
        s, pos = jax.lax.top_k(s, k)
        return s, jnp.take_along_axis(i, pos, axis=-1)

    return search


def _put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Places a host array that every process holds whole (works across hosts too)."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)


class ShardedScan:
    """A (N, W) row matrix of any dtype (float vectors, int8 codes, packed bits), padded and split
    into one contiguous block per device, searched with `score(q, rows) -> (Q, C)` in fixed-shape
    query batches (one compile per (batch, k)); ties go to the lower row."""

    def __init__(self, rows: np.ndarray, score, *, chunk_size: int, query_batch: int, devices):
        self.rows, self.score = rows, score
        self.mesh = Mesh(np.array(list(devices)), ("x",))
        self.chunk_size, self.query_batch = chunk_size, query_batch
        self._layouts: dict[int, tuple[int, jax.Array]] = {}

    def _layout(self, k: int) -> tuple[int, int, jax.Array]:
        """(chunk, block, padded rows on device) with chunk >= k; cached per chunk."""
        n, ndev = self.rows.shape[0], self.mesh.devices.size
        per_dev = -(-n // ndev)
        chunk = max(k, min(self.chunk_size, per_dev))
        if chunk not in self._layouts:
            block = -(-per_dev // chunk) * chunk
            padded = np.zeros((block * ndev, self.rows.shape[1]), self.rows.dtype)
            padded[:n] = self.rows
            self._layouts[chunk] = (block, _put(padded, NamedSharding(self.mesh, P("x"))))
        block, arr = self._layouts[chunk]
        return chunk, block, arr

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, Dq) in the score's query format -> (scores (Q, k') float32, rows (Q, k') int64),
        k' = min(k, N)."""
        count = self.rows.shape[0]
        k = min(int(k), count)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        chunk, block, p = self._layout(k)
        fn = _search_fn(self.mesh, k, chunk, block, count, self.score)
        qb = min(self.query_batch, max(1, q.shape[0]))
        out_s, out_i = [], []
        rep = NamedSharding(self.mesh, P())
        for start in range(0, q.shape[0], qb):
            batch = q[start : start + qb]
            pad = np.zeros((qb, q.shape[1]), q.dtype)
            pad[: len(batch)] = batch  # fixed shape: one compile per (qb, k)
            s, i = multihost.to_host(fn(_put(pad, rep), p))  # replicated: no transfer between hosts
            out_s.append(s[: len(batch)])
            out_i.append(i[: len(batch)])
        s, i = np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)
        return s[:, :k].astype(np.float32), i[:, :k]


def describe_exact(
    m: IndexManifest, count, dim, dtype, similarity, truncate_dim, chunk_size, query_batch
) -> None:
    """Fills an exact index's manifest (in memory or over shards: both save and load alike)."""
    m.kind, m.similarity, m.count, m.dim, m.dtype = "exact", similarity, int(count), int(dim), dtype
    m.params = {"chunk_size": chunk_size, "query_batch": query_batch}
    if truncate_dim:
        m.params["truncate_dim"] = int(truncate_dim)


class ExactIndex:
    """Brute-force inner-product (or cosine) index sharded over all devices (of all hosts)."""

    kind = "exact"
    inputs = "vector"

    def __init__(
        self,
        embeddings: np.ndarray,
        manifest: IndexManifest | None = None,
        *,
        similarity: str = "dot",
        truncate_dim: int = 0,
        chunk_size: int = 16384,
        query_batch: int = 1024,
        devices=None,
    ):
        check_similarity(similarity)
        p = check_corpus(embeddings)
        self.manifest = manifest or IndexManifest(kind="exact", count=p.shape[0])
        dim = p.shape[1]  # what queries carry
        p = truncate(p, truncate_dim, self.manifest.normalize)
        if similarity == "cos":
            p = l2_normalize(p)
        self.embeddings = p  # (N, d), truncated and normalised as configured
        self.similarity, self.truncate_dim = similarity, int(truncate_dim)
        describe_exact(
            self.manifest,
            p.shape[0],
            dim,
            str(p.dtype),
            similarity,
            truncate_dim,
            chunk_size,
            query_batch,
        )
        devices = list(devices if devices is not None else jax.devices())
        self.scan = ShardedScan(
            p, dot_scores, chunk_size=chunk_size, query_batch=query_batch, devices=devices
        )
        self.mesh = self.scan.mesh

    def memory(self) -> dict[str, int]:
        """Bytes of the searched vectors, and of the same vectors in float32 (equal here)."""
        return {
            "index_bytes": int(self.embeddings.nbytes),
            "float32_bytes": self.embeddings.size * 4,
        }

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, D) -> (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N)."""
        q = check_queries(q, self.manifest)
        q = truncate(q, self.truncate_dim, self.manifest.normalize)
        if self.similarity == "cos":
            q = l2_normalize(q)
        return self.scan.search(q, k)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes embeddings.npy + manifest.json into `directory` (callers use atomic_dir)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / EMBEDDINGS, self.embeddings)
        write_manifest(d, self.manifest)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, weights_hash: str | None = None, devices=None
    ) -> ExactIndex:
        m = read_manifest(directory, kind="exact")
        m.check(weights_hash=weights_hash)
        p = np.load(Path(directory) / EMBEDDINGS)
        dim, stored = m.dim, int(m.params.get("truncate_dim", 0)) or m.dim
        if p.shape != (m.count, stored):
            raise ValueError(
                f"{directory}: embeddings {p.shape} disagree with the manifest "
                f"({m.count}, {stored})"
            )
        index = cls(
            p,
            m,
            similarity=m.similarity,
            truncate_dim=int(m.params.get("truncate_dim", 0)),
            devices=devices,
            chunk_size=m.params.get("chunk_size", 16384),
            query_batch=m.params.get("query_batch", 1024),
        )
        index.manifest.dim = dim  # the stored rows are truncated; queries arrive full width
        return index
