"""Exact (brute-force) search: jitted matmul + `lax.top_k` over corpus chunks.

The corpus is padded and split into one contiguous block of rows per device; each device scans
its block chunk by chunk, keeping a running top-k, and the per-device results are merged with
one more top-k. Because blocks are contiguous and `lax.top_k` keeps the lower position first on
ties, equal scores always resolve to the lower corpus row, on any number of devices.

By default the mesh holds every device of every process: each host holds the whole corpus matrix
and contributes its devices' blocks; every process must call `search` with the same queries, and
all get the full result.
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
    read_manifest,
    write_manifest,
)

EMBEDDINGS = "embeddings.npy"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): cosine similarity as a dot product."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _merge(s_a, i_a, s_b, i_b, k):
    """Top-k of two candidate lists; a's entries win ties (they hold lower rows)."""
    s = jnp.concatenate([s_a, s_b], axis=-1)
    i = jnp.concatenate([i_a, i_b], axis=-1)
    s, pos = jax.lax.top_k(s, k)
    return s, jnp.take_along_axis(i, pos, axis=-1)


@functools.lru_cache(maxsize=32)
def _search_fn(mesh: Mesh, k: int, chunk: int, block: int, count: int):
    """Compiled search for fixed (k, chunk, block rows per device, corpus count)."""
    n_chunks = block // chunk

    def local(q, p):  # q (Q, D) replicated; p (block, D) = this device's rows
        start = jax.lax.axis_index("x") * block
        p = p.reshape(n_chunks, chunk, p.shape[-1])

        def body(carry, c):
            s_run, i_run = carry
            s = q @ p[c].T  # (Q, chunk)
            rows = start + c * chunk + jnp.arange(chunk, dtype=jnp.int32)
            s = jnp.where(rows[None, :] < count, s, -jnp.inf)
            s_c, pos = jax.lax.top_k(s, k)
            return _merge(s_run, i_run, s_c, rows[pos], k), None

        init = (
            jnp.full((q.shape[0], k), -jnp.inf, q.dtype),
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
        chunk_size: int = 16384,
        query_batch: int = 1024,
        devices=None,
    ):
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        p = check_corpus(embeddings)
        if similarity == "cos":
            p = l2_normalize(p)
        self.embeddings = p  # (N, D), normalised if cosine
        self.similarity = similarity
        self.manifest = manifest or IndexManifest(kind="exact", count=p.shape[0])
        self.manifest.kind, self.manifest.similarity = "exact", similarity
        self.manifest.count, self.manifest.dim = p.shape[0], p.shape[1]
        self.manifest.dtype = str(p.dtype)
        self.manifest.params = {"chunk_size": chunk_size, "query_batch": query_batch}
        devices = list(devices if devices is not None else jax.devices())
        self.mesh = Mesh(np.array(devices), ("x",))
        self.chunk_size, self.query_batch = chunk_size, query_batch
        self._layouts: dict[int, tuple[int, jax.Array]] = {}

    def _layout(self, k: int) -> tuple[int, int, jax.Array]:
        """(chunk, block, padded corpus on device) with chunk >= k; cached per chunk."""
        n, ndev = self.embeddings.shape[0], self.mesh.devices.size
        per_dev = -(-n // ndev)
        chunk = max(k, min(self.chunk_size, per_dev))
        if chunk not in self._layouts:
            block = -(-per_dev // chunk) * chunk
            padded = np.zeros((block * ndev, self.embeddings.shape[1]), np.float32)
            padded[:n] = self.embeddings
            self._layouts[chunk] = (block, _put(padded, NamedSharding(self.mesh, P("x"))))
        block, arr = self._layouts[chunk]
        return chunk, block, arr

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (Q, D) -> (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N)."""
        q = check_queries(q, self.manifest)
        if self.similarity == "cos":
            q = l2_normalize(q)
        k = min(int(k), self.manifest.count)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        chunk, block, p = self._layout(k)
        fn = _search_fn(self.mesh, k, chunk, block, self.manifest.count)
        qb = min(self.query_batch, max(1, q.shape[0]))
        out_s, out_i = [], []
        rep = NamedSharding(self.mesh, P())
        for start in range(0, q.shape[0], qb):
            batch = q[start : start + qb]
            pad = np.zeros((qb, q.shape[1]), np.float32)
            pad[: len(batch)] = batch  # fixed shape: one compile per (qb, k)
            s, i = multihost.to_host(fn(_put(pad, rep), p))  # replicated: no transfer between hosts
            out_s.append(s[: len(batch)])
            out_i.append(i[: len(batch)])
        s, i = np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)
        return s[:, :k].astype(np.float32), i[:, :k]

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
        if p.shape != (m.count, m.dim):
            raise ValueError(
                f"{directory}: embeddings {p.shape} disagree with the manifest ({m.count}, {m.dim})"
            )
        return cls(
            p,
            m,
            similarity=m.similarity,
            devices=devices,
            chunk_size=m.params.get("chunk_size", 16384),
            query_batch=m.params.get("query_batch", 1024),
        )
