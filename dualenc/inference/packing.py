"""Sequence packing: several texts per row instead of one text padded to its bucket.

Padding a batch to its longest member wastes most of the compute on mixed-length text (short
queries beside long passages). A packed row holds up to S texts back to back, with segment ids
(0 = padding, 1..S = text in the row) that make attention block-diagonal, positions that
restart per text, and pooling per segment (`dual_encoder.embed_packed`), so each text embeds
exactly as it does alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dualenc import multihost
from dualenc.inference.batching import Placer, default_mesh, progress_bar, tokenize_for_encoding
from dualenc.models.dual_encoder import embed_packed, tower
from dualenc.tokenization import DEFAULT_BUCKETS, bucket_batches, bucket_length, pad_id

DEFAULT_MAX_SEGMENTS = 32
# Attention visits only each text's own keys (the native kernel's segment spans), so a longer
# row costs no more per token and packs with less padding: mixed-length texts 7 % faster at 256
# than at 128 (benchmarks/README.md).
DEFAULT_ROW_LENGTH = 256
# encode_texts packs by default where packing computes at least this share fewer token
# positions than length-bucketed padding: a packed position costs a little more (per-text
# pooling and positions; SciFact, 8.7 % packed padding vs 5.7 % padded, encoded 4-5 % slower).
MIN_SAVING = 0.05
# pack_tiers packs at most this many texts together: first-fit scans the open rows for each
# text, so one pack of n texts costs ~n² / 8 (80k texts 0.9 s, a million minutes); chunks keep
# it linear in n and fill their rows as well (texts arrive in corpus order, not sorted).
PACK_CHUNK = 1 << 15
_STEPS: dict = {}


@dataclasses.dataclass(frozen=True)
class Packed:
    """Packed rows (R, L) and where each input text went: text i is row[i], segment[i]."""

    input_ids: np.ndarray  # (R, L) int32, pad_id after the last text of a row
    segment_ids: np.ndarray  # (R, L) int32, 0 = padding, s + 1 for the row's s-th text
    position_ids: np.ndarray  # (R, L) int32, 0 at each text's first token
    row: np.ndarray  # (N,) int32
    segment: np.ndarray  # (N,) int32, 0-based (segment id - 1)

    @property
    def padding_fraction(self) -> float:
        """Share of the row tokens that are padding (the compute packing still wastes)."""
        return float(np.mean(self.segment_ids == 0)) if self.segment_ids.size else 0.0


def first_fit(
    lengths: np.ndarray, row_length: int, max_segments: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(row, segment, start, rows used) of N texts of these lengths, first-fit decreasing.

    The layout depends on the lengths alone, so hosts that know every text's length agree on
    it without tokenising each other's texts (`packed_part`).
    """
    if row_length < 1 or max_segments < 1:
        raise ValueError(
            f"row_length and max_segments must be ≥ 1, got {row_length}, {max_segments}"
        )
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > row_length:
        i = int(lengths.argmax())
        raise ValueError(f"text {i} has {lengths[i]} tokens > row_length {row_length}")
    n = len(lengths)
    row, segment, start = (np.zeros(n, np.int64) for _ in range(3))
    # One slot per possible row; room = -1 once a row holds max_segments texts.
    room = np.full(max(n, 1), row_length, np.int64)
    count = np.zeros(max(n, 1), np.int64)
    used = 0
    for i in np.argsort(-lengths, kind="stable"):
        r = int(np.argmax(room[: used + 1] >= lengths[i]))  # `used` is always an empty row
        used = max(used, r + 1)
        row[i], segment[i], start[i] = r, count[r], row_length - room[r]
        room[r] -= lengths[i]
        count[r] += 1
        if count[r] == max_segments:
            room[r] = -1
    return row, segment, start, used


def _fill(seqs, texts, row, segment, start, lo: int, rows: int, row_length: int, pad: int):
    """(ids, segment ids, positions) of rows [lo, lo + rows) holding texts[j] = seqs[j]."""
    ids = np.full((rows, row_length), pad, np.int32)
    seg = np.zeros((rows, row_length), np.int32)
    pos = np.zeros((rows, row_length), np.int32)
    for i, s in zip(texts, seqs, strict=True):
        r, a, k = row[i] - lo, start[i], len(s)
        ids[r, a : a + k] = s
        seg[r, a : a + k] = segment[i] + 1
        pos[r, a : a + k] = np.arange(k)
    return ids, seg, pos


def pack(
    seqs: Sequence[Sequence[int]],
    row_length: int,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    pad: int = 0,
) -> Packed:
    """First-fit decreasing: longest text first, each into the first row with room for it.

    A row holds at most `row_length` tokens and `max_segments` texts. Texts are never split;
    one longer than `row_length` is a ValueError (truncate when tokenising).
    """
    lengths = np.array([len(s) for s in seqs], np.int64)
    row, segment, start, used = first_fit(lengths, row_length, max_segments)
    ids, seg, pos = _fill(seqs, range(len(seqs)), row, segment, start, 0, used, row_length, pad)
    return Packed(ids, seg, pos, row.astype(np.int32), segment.astype(np.int32))


def packed_part(
    lengths: np.ndarray,
    encode,
    *,
    row_length: int,
    max_segments: int,
    rows_multiple: int = 1,
    part: int = 0,
    parts: int = 1,
    pad: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Part `part` of `parts` of the packing of N texts: (input_ids, segment_ids) of its
    contiguous R / parts rows, and every text's (row, segment) (N,) in the whole packing.

    The rows R (first-fit on `lengths`, rounded up to `rows_multiple`, which `parts` must
    divide) are the same for every part, so the parts of all hosts concatenate to the one-host
    packing; `encode(indices)` → token-id lists is asked only for the texts of this part.
    """
    if rows_multiple % parts or not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts} with rows_multiple {rows_multiple}")
    row, segment, start, used = first_fit(lengths, row_length, max_segments)
    per = -(-used // rows_multiple) * rows_multiple // parts  # rows of each part
    lo = part * per
    texts = np.flatnonzero((row >= lo) & (row < lo + per))
    seqs = encode(texts)
    for i, s in zip(texts, seqs, strict=True):
        if len(s) != lengths[i]:  # the layout would overlap texts: never pack on stale lengths
            raise ValueError(f"text {i} has {len(s)} tokens, its length says {lengths[i]}")
    ids, seg, _ = _fill(seqs, texts, row, segment, start, lo, per, row_length, pad)
    return ids, seg, row.astype(np.int32), segment.astype(np.int32)


def packed_step(spec, num_segments: int):
    """The jitted (params, input_ids, segment_ids) → (R, S, D) float32 step (cached per spec).

    Positions are derived on device from the segment ids (`bert.segment_positions`).
    """
    key = (spec, num_segments)
    if key not in _STEPS:

        def step(params, input_ids, segment_ids):
            return embed_packed(spec, params, input_ids, segment_ids, num_segments=num_segments)

        _STEPS[key] = jax.jit(step)
    return _STEPS[key]


def pack_tiers(
    seqs: Sequence[Sequence[int]],
    row_length: int,
    top_length: int,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    pad: int = 0,
) -> list[tuple[np.ndarray, Packed]]:
    """[(text indices, their Packed)]: texts ≤ row_length in rows of row_length, longer ones
    (≤ top_length) in rows of top_length, each tier in chunks of ≤ PACK_CHUNK texts."""
    lengths = np.array([len(s) for s in seqs], np.int64)
    out, lo = [], 0
    for tier in sorted({min(row_length, top_length), top_length}):
        sel = np.flatnonzero((lengths > lo) & (lengths <= tier))
        lo = tier
        for c in range(0, sel.size, PACK_CHUNK):
            part = sel[c : c + PACK_CHUNK]
            out.append((part, pack([seqs[i] for i in part], tier, max_segments, pad)))
    return out


def worth_packing(
    seqs: Sequence[Sequence[int]],
    batch_size: int,
    max_length: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    row_length: int = DEFAULT_ROW_LENGTH,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
) -> tuple[bool, float, float]:
    """(pack?, padding fraction padded, padding fraction packed) for these tokenised texts:
    pack when its rows hold ≥ MIN_SAVING fewer positions than `encode_texts`' padded batches."""
    lengths = [len(s) for s in seqs]
    batches = bucket_batches(lengths, batch_size, buckets, max_length=max_length)
    padded = sum(len(idx) * n for idx, n in batches)
    top = bucket_length(max(lengths), buckets, max_length)
    packed = sum(p.input_ids.size for _, p in pack_tiers(seqs, row_length, top, max_segments))
    real = sum(lengths)
    return packed <= (1 - MIN_SAVING) * padded, 1 - real / padded, 1 - real / packed


def encode_packed(
    encoder,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    row_length: int = DEFAULT_ROW_LENGTH,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    mesh: Mesh | None = None,
    progress: bool = True,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    tokenized: tuple[list, int] | None = None,
) -> np.ndarray:
    """(N, D) float32 embeddings of `texts` in input order, computed on packed rows.

    Texts up to `row_length` tokens share rows of that length, longer ones rows of the bucket
    of the longest (`pack_tiers`); `batch_size` counts rows of `row_length` per step (fewer
    longer rows: the same tokens). Equal to `encode.encode_texts` up to rounding (≤ 1e-5).
    `tokenized`: `tokenize_for_encoding`'s (ids, max_length) of `texts`, when already made.
    """
    if tokenized is None:
        tokenized = tokenize_for_encoding(encoder, texts, batch_size, max_length)
    seqs, max_length = tokenized
    if not seqs:
        return np.zeros((0, encoder.config.hidden_size), np.float32)
    top = bucket_length(max(len(s) for s in seqs), buckets, max_length)
    tiers = pack_tiers(seqs, row_length, top, max_segments, pad_id(encoder.tokenizer))
    step = packed_step(encoder.spec, max_segments)
    placer = Placer(encoder.params, mesh if mesh is not None else default_mesh())
    out, pending = None, []
    bar = progress_bar(len(seqs), progress)
    for sel, packed in tiers:
        n_rows, length = packed.input_ids.shape
        per_step = max(1, batch_size * min(row_length, top) // length)
        order = np.argsort(packed.row, kind="stable")  # texts grouped by row
        first = np.searchsorted(packed.row[order], np.arange(n_rows + 1))
        for r0 in range(0, n_rows, per_step):
            r1 = min(r0 + per_step, n_rows)
            ids, seg = packed.input_ids[r0:r1], packed.segment_ids[r0:r1]
            filler = placer.rows(r1 - r0, per_step) - (r1 - r0)
            if filler:  # all-padding rows: their (zero) embeddings are dropped
                ids = np.concatenate([ids, np.zeros((filler, length), np.int32)])
                seg = np.concatenate([seg, np.zeros((filler, length), np.int32)])
            local = order[first[r0] : first[r1]]
            where = (sel[local], packed.row[local] - r0, packed.segment[local])
            pending.append((where, step(*placer.put(ids, seg))))
            while len(pending) > 2:
                out = _fetch(pending.pop(0), out, len(seqs), bar)
    while pending:
        out = _fetch(pending.pop(0), out, len(seqs), bar)
    bar.close()
    return out


def _fetch(item, out, n: int, bar) -> np.ndarray:
    (idx, rows, segs), emb = item
    emb = multihost.to_host(emb)  # (rows, S, D)
    if out is None:
        out = np.empty((n, emb.shape[-1]), np.float32)
    out[idx] = emb[rows, segs]
    bar.update(len(idx))
    return out


def pack_batch(
    batch: dict[str, np.ndarray], *, max_segments: int, rows_multiple: int = 1, pad: int = 0
) -> dict[str, np.ndarray]:
    """A padded training batch → the same batch with packed queries and passages.

    Replaces '{q,p}_input_ids' / '{q,p}_attention_mask' ((b, Lq), (b, 1+k, Lp)) by packed rows
    '{q,p}_input_ids' and '{q,p}_segment_ids' (R, L), and each text's place '{q,p}_text_row' /
    '{q,p}_text_seg' ((b,), (b, 1+k)). Rows keep the batch's padded length L; their count R is
    rounded up to `rows_multiple` (devices × a step), so jit sees few shapes. Other keys pass.
    """
    out = {k: v for k, v in batch.items() if not k.endswith(("_input_ids", "_attention_mask"))}
    for side in ("q", "p"):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        lead, length = ids.shape[:-1], ids.shape[-1]
        ids, mask = ids.reshape(-1, length), mask.reshape(-1, length)
        seqs = [row[m > 0] for row, m in zip(ids, mask, strict=True)]
        lengths = np.array([len(s) for s in seqs], np.int64)
        out.update(
            packed_side(
                side,
                lengths,
                lambda texts, seqs=seqs: [seqs[i] for i in texts],
                lead,
                row_length=length,
                max_segments=max_segments,
                rows_multiple=rows_multiple,
                pad=pad,
            )
        )
    return out


def packed_side(
    side: str, lengths, encode, lead: tuple[int, ...], *, texts=slice(None), **part_kw
) -> dict[str, np.ndarray]:
    """One side's packed batch keys ('{side}_input_ids', '_segment_ids' (R / parts, L),
    '_text_row', '_text_seg' of `texts`, reshaped to `lead`) from `packed_part(**part_kw)`."""
    ids, seg, row, segment = packed_part(lengths, encode, **part_kw)
    return {
        f"{side}_input_ids": ids,
        f"{side}_segment_ids": seg,
        f"{side}_text_row": row[texts].reshape(lead),
        f"{side}_text_seg": segment[texts].reshape(lead),
    }


def packed_embed_fns(spec, dropout: bool, num_segments: int):
    """(embed_q, embed_p) for packed rows, each (params, ids, segment_ids, rng) → (R, S, D)."""

    def mk(side):
        def embed(params, ids, segment_ids, rng):
            return embed_packed(
                spec,
                tower(params, side),
                ids,
                segment_ids,
                num_segments=num_segments,
                deterministic=not dropout,
                rngs={"dropout": rng} if dropout else None,
            )

        return embed

    return mk("q"), mk("p")


def gather_segments(emb, row, segment):
    """(R, S, D) per-segment embeddings → (N, D) in text order, differentiably (for losses)."""
    return jnp.asarray(emb)[jnp.asarray(row), jnp.asarray(segment)]
