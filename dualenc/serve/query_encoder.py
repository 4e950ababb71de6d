"""The query side of `dualenc.serve`: a query tower run on fixed shapes only.

Queries of a batch are tokenised and, where the tower packs (BERT / MiniLM / DistilBERT), packed
several to a row (segment-masked attention and per-segment pooling: each embeds as it does
alone), else padded to a length bucket; row counts are padded to a batch bucket. Every shape is
a (row length bucket, batch bucket) pair, so `warm_up` compiles them all and serving never
compiles again. Packing matters on short queries: a batch of 32 SciFact queries (22 tokens on
average) computes ~1.2x its real tokens packed, ~1.6x padded (93 vs 130 ms on 2 cores).
"""

from __future__ import annotations

import jax
import numpy as np

from dualenc.inference import packing
from dualenc.inference.encode import encode_step
from dualenc.models.dual_encoder import PACKABLE_ARCHS
from dualenc.serve.config import ServeConfig, bucket
from dualenc.tokenization import pad_batch, pad_id, tokenize


class QueryEncoder:
    """`encode(texts)` → (N, D) float32 with the shapes of `config` (`ServeConfig`)."""

    def __init__(self, encoder, index_max_length: int, config: ServeConfig):
        self.encoder, self.config = encoder, config
        top = config.length_buckets[-1]
        self.max_length = min(index_max_length or encoder.max_length, top)
        self.lengths = tuple(sorted({min(b, self.max_length) for b in config.length_buckets}))
        self.params = jax.device_put(encoder.params, jax.local_devices()[0])
        self.step = encode_step(encoder.spec)
        self.packed = bool(config.pack_row_length) and encoder.spec.arch in PACKABLE_ARCHS
        if self.packed:
            self.packed_step = packing.packed_step(encoder.spec, config.pack_segments)

    def warm_up(self) -> None:
        """Runs every (row length, row count) shape once: each compiles here, not under load."""
        pad = pad_id(self.encoder.tokenizer)
        for length in self.lengths:
            for rows in self.config.batch_buckets:
                ids = np.full((rows, length), pad, np.int32)
                mask = np.zeros_like(ids)
                mask[:, 0] = 1  # one token per row: a packed row holding one text
                step = self.packed_step if self.packed else self.step
                np.asarray(step(self.params, ids, mask))

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32 query embeddings, computed on packed rows where the tower packs, else
        on rows padded to length buckets; row counts padded to batch buckets."""
        enc = self.encoder
        seqs = tokenize(enc.tokenizer, texts, self.max_length)
        out = np.empty((len(seqs), enc.dim), np.float32)
        if self.packed:
            self._encode_packed(seqs, out)
        else:
            self._encode_padded(seqs, out)
        return out

    def _encode_padded(self, seqs: list[list[int]], out: np.ndarray) -> None:
        cfg, pad = self.config, pad_id(self.encoder.tokenizer)
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(bucket(len(s), self.lengths), []).append(i)
        for length, idx in by_len.items():
            for start in range(0, len(idx), cfg.max_batch):
                part = idx[start : start + cfg.max_batch]
                ids, mask = pad_batch([seqs[i] for i in part], length, pad)
                rows = bucket(len(part), cfg.batch_buckets)
                ids, mask = _fill_rows(ids, mask, rows, pad)
                out[part] = np.asarray(self.step(self.params, ids, mask))[: len(part)]

    def _encode_packed(self, seqs: list[list[int]], out: np.ndarray) -> None:
        """Queries up to `pack_row_length` tokens share rows, longer ones share rows of their
        length bucket; each embeds as it does alone (segment-masked attention, per-segment
        pooling). The short rows take the length bucket that computes the fewest positions
        (a lone 20-token query: one row of 32; 32 SciFact queries: ~8 rows of 64)."""
        cfg, pad = self.config, pad_id(self.encoder.tokenizer)
        lengths = np.array([len(s) for s in seqs])
        cap = max([b for b in self.lengths if b <= cfg.pack_row_length] or self.lengths[:1])
        for group in (np.flatnonzero(lengths <= cap), np.flatnonzero(lengths > cap)):
            if not group.size:
                continue
            longest = bucket(int(lengths[group].max()), self.lengths)
            options = [b for b in self.lengths if longest <= b <= max(cap, longest)]
            row_length = min(options, key=lambda b: self._packed_positions(lengths[group], b))
            p = packing.pack([seqs[i] for i in group], row_length, cfg.pack_segments, pad)
            n_rows = len(p.input_ids)
            for r0 in range(0, n_rows, cfg.max_batch):
                r1 = min(r0 + cfg.max_batch, n_rows)
                rows = bucket(r1 - r0, cfg.batch_buckets)
                ids = np.full((rows, row_length), pad, np.int32)
                seg = np.zeros((rows, row_length), np.int32)  # filler rows: all padding
                ids[: r1 - r0], seg[: r1 - r0] = p.input_ids[r0:r1], p.segment_ids[r0:r1]
                emb = np.asarray(self.packed_step(self.params, ids, seg))  # (rows, S, D)
                here = (p.row >= r0) & (p.row < r1)
                out[group[here]] = emb[p.row[here] - r0, p.segment[here]]

    def _packed_positions(self, lengths: np.ndarray, row_length: int) -> int:
        """Token positions the packed step computes for texts of these lengths in such rows."""
        cfg = self.config
        used = packing.first_fit(lengths, row_length, cfg.pack_segments)[3]
        full, rest = divmod(used, cfg.max_batch)
        rows = full * cfg.max_batch + (bucket(rest, cfg.batch_buckets) if rest else 0)
        return rows * row_length


def _fill_rows(ids: np.ndarray, mask: np.ndarray, rows: int, pad: int):
    """Pads a batch to `rows` with filler rows attending one [PAD] (no NaN), discarded later."""
    n = ids.shape[0]
    if rows == n:
        return ids, mask
    ids = np.concatenate([ids, np.full((rows - n, ids.shape[1]), pad, np.int32)])
    mask = np.concatenate([mask, np.zeros((rows - n, mask.shape[1]), np.int32)])
    mask[n:, 0] = 1
    return ids, mask
