"""What a server accepts and how it batches: the one place its limits and buckets are set.

Limits bound the work one request can ask for (body bytes, query characters, k, queries per
batch request, queue length), so no input can exhaust the server; buckets fix every shape the
jitted encoder, index and cross-encoder see, so that warm-up compiles them all and load never
compiles again.
"""

from __future__ import annotations

import dataclasses

from dualenc.io import InputError


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Limits, batching and first-stage depth of `dualenc.serve` (flags of the same names)."""

    max_body_bytes: int = 256 * 1024  # a request body past this is refused (413) unread
    max_query_chars: int = 2048  # longer queries are refused (422), not silently truncated
    max_k: int = 100  # hits per query
    default_k: int = 10
    max_batch_queries: int = 64  # queries in one POST /search/batch
    max_queue: int = 1024  # queued queries before new ones get 503
    max_batch: int = 32  # queries per encode call (the largest batch bucket)
    max_wait_ms: float = 5.0  # how long the batcher waits for more queries
    # Queries of one length bucket are padded to the next batch bucket: finer buckets waste fewer
    # rows (SciFact claims: 21 tokens p50, 34 p90) at the price of more warm-up compiles.
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32)
    length_buckets: tuple[int, ...] = (16, 32, 48, 64, 128, 256)
    # Packed query rows (BERT / MiniLM / DistilBERT towers): queries up to `pack_row_length`
    # tokens share rows of that length, up to `pack_segments` per row, longer ones share rows of
    # the largest length bucket; the row count is padded to a batch bucket. A batch of 32 SciFact
    # queries then computes ~1.3x its real tokens instead of ~1.6x, and warm-up compiles 2 row
    # lengths instead of every length bucket. 0 turns packing off (DeBERTa never packs).
    pack_row_length: int = 64
    pack_segments: int = 16
    rerank_top: int = 100  # first-stage hits the cross-encoder rescores
    rerank_batch: int = 32  # (query, doc) pairs per cross-encoder call
    snippet_chars: int = 240

    def __post_init__(self):
        for name in ("max_body_bytes", "max_query_chars", "max_k", "default_k", "max_queue"):
            if getattr(self, name) < 1:
                raise InputError(f"must be ≥ 1, got {getattr(self, name)}", field=name)
        for name in ("pack_row_length", "pack_segments"):
            if getattr(self, name) < 0:
                raise InputError(f"must be ≥ 0, got {getattr(self, name)}", field=name)
        for name in ("max_batch_queries", "max_batch", "rerank_top", "rerank_batch"):
            if getattr(self, name) < 1:
                raise InputError(f"must be ≥ 1, got {getattr(self, name)}", field=name)
        if self.default_k > self.max_k:
            raise InputError(f"must be ≤ max_k ({self.max_k})", field="default_k")
        if not 0 <= self.max_wait_ms <= 1000:
            raise InputError(f"must be in 0..1000 ms, got {self.max_wait_ms}", field="max_wait_ms")
        for name in ("batch_buckets", "length_buckets"):
            b = getattr(self, name)
            if not b or list(b) != sorted(set(b)) or b[0] < 1:
                raise InputError(f"must be increasing positive integers, got {b}", field=name)
        if self.batch_buckets[-1] != self.max_batch:
            raise InputError(
                f"the largest batch bucket ({self.batch_buckets[-1]}) must equal max_batch "
                f"({self.max_batch})",
                field="batch_buckets",
            )

    def depth(self, reranking: bool) -> int:
        """First-stage hits fetched per query: one fixed k, so the index compiles once per
        batch bucket whatever k a request asks for."""
        return max(self.max_k, self.rerank_top) if reranking else self.max_k


def bucket(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket ≥ n (n must not exceed the largest)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
