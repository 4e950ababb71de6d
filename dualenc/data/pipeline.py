"""The training input pipeline: a store split → per-host numpy batches for a dual encoder.

A grain dataset of global steps, each mapped through: the epoch's example order (an index shuffle
seeded by seed, epoch) → the global batch's example ids → positive + k hard negatives per row,
drawn by (seed, epoch, example index) → this host's rows only (process_index of process_count) →
tokenisation of those rows, padded to lengths every host computes alike from per-text token
lengths (or, with packing, laid out in packed rows from those lengths, the host tokenising only
its own part of the global batch's rows) → prefetched by grain worker threads. Every batch is a
pure function of the step number, so the iterator state is grain's JSON `{"next_index": step}`,
resume is exact, and concatenating the hosts' batches gives the one-host batch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import grain
import jax
import numpy as np

from dualenc import tokenization
from dualenc.data import records
from dualenc.data.records import TEXT_FORMATS, Record, Split, load_examples
from dualenc.inference import packing
from dualenc.io import InputError

FORMATS = (*TEXT_FORMATS, "tfds", "arrayrecord")
STORE_FORMATS = ("tfds", "arrayrecord")  # both: a TFDS training dataset (dualenc.build_tfds)

__all__ = ["FORMATS", "TrainPipeline", "load_examples", "open_data"]


def open_data(examples=None, path=None, format: str = "dpr", split: str = "train") -> Split:
    """The random-access Split to train on: given examples (in memory), a store dir, or a file."""
    if examples is not None:
        return examples if isinstance(examples, Split) else records.memory_split(list(examples))
    if path is None:
        raise ValueError("TrainPipeline needs `examples` or `path`")
    if format in STORE_FORMATS:
        return records.open_split(path, split)
    if format not in FORMATS:
        raise InputError(f"unknown training data format {format!r}; expected one of {FORMATS}")
    return records.memory_split(load_examples(path, format, split=split))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]) & 0x7FFFFFFF


class TrainPipeline:
    """Deterministic, resumable, prefetching iterator of dual-encoder training batches (per host).

    Yields {'q_input_ids' (b, Lq), 'q_attention_mask', 'p_input_ids' (b, 1+k, Lp),
    'p_attention_mask', 'p_ids' (b, 1+k), 'q_pos_ids' (b, P)} int32 (+ 'teacher_scores' (b, 1+k)
    float32 when the data has them), b = global_batch_size / process_count; p[:, 0] is a positive
    and q_pos_ids all positives of the row's query, padded with -1. Lq/Lp are the longest in the
    GLOBAL batch rounded up to a bucket (≤ max length), so hosts agree and jit sees few shapes.
    With `packing`, '{q,p}_input_ids' / '_segment_ids' are this host's part of the packed rows
    (`packing.pack_batch` keys) and '{q,p}_text_row' / '_text_seg' index the global rows.
    """

    def __init__(
        self,
        examples=None,
        tokenizer=None,
        *,
        path=None,
        format: str = "dpr",
        split: str = "train",
        global_batch_size: int | None = None,
        batch_size: int | None = None,
        num_negatives: int = 1,
        q_max_length: int = 32,
        p_max_length: int = 128,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        drop_remainder: bool = True,
        buckets: Sequence[int] = tokenization.TRAIN_BUCKETS,
        pad_multiple: int | None = None,
        num_threads: int = 2,
        prefetch: int = 4,
        packing: bool = False,
        pack_max_segments: int = 16,
    ):
        self.data = open_data(examples, path, format, split)
        if tokenizer is None:
            raise ValueError("TrainPipeline needs a tokenizer")
        self.tokenizer, self.pad_id = tokenizer, tokenization.pad_id(tokenizer)
        gbs = global_batch_size if global_batch_size is not None else batch_size
        if gbs is None or gbs <= 0:
            raise ValueError(f"global_batch_size must be positive, got {gbs}")
        self.global_batch_size, self.num_negatives = int(gbs), int(num_negatives)
        self.q_max_length, self.p_max_length = int(q_max_length), int(p_max_length)
        self.seed, self.drop_remainder = int(seed), bool(drop_remainder)
        self.buckets, self.pad_multiple = tuple(buckets), pad_multiple
        self.max_positives = self.data.max_positives
        self._init_hosts(process_index, process_count)
        self._check_sizes()
        self.packing, self.pack_max_segments = bool(packing), int(pack_max_segments)
        self._local, self._lock = threading.local(), threading.Lock()
        self._lengths, self._orders = None, {}
        fixed = self._fixed_length(self.q_max_length) and self._fixed_length(self.p_max_length)
        if self.packing or not fixed:  # packing lays rows out by length, on every host alike
            self.token_lengths()  # up front: a pass over every text, before any worker starts
        self.read_options = grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=prefetch
        )
        self._iter = iter(self.dataset().to_iter_dataset(self.read_options))

    def _init_hosts(self, process_index, process_count):
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if self.global_batch_size % process_count:
            raise ValueError(
                f"global batch {self.global_batch_size} is not divisible by "
                f"{process_count} processes"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch_size = self.global_batch_size // self.process_count

    def _check_sizes(self):
        if self.num_negatives > 0 and self.num_passages < 2:
            raise InputError("need at least two distinct passages to sample negatives")
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{self.num_examples} examples < global batch size "
                f"{self.global_batch_size} with drop_remainder=True"
            )

    # ------------------------------------------------------------------ sizes and state

    @property
    def num_examples(self) -> int:
        return len(self.data.examples)

    @property
    def num_passages(self) -> int:
        return len(self.data.passages)

    @property
    def texts(self) -> Sequence[str]:
        """Passage text by id (random access; a store reads it from disk)."""
        return self.data.passages

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_examples, self.global_batch_size
        return n // b if self.drop_remainder else -(-n // b)

    @property
    def step(self) -> int:
        """Global step index of the next batch to yield."""
        return int(self._iter.get_state()["next_index"])

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def position(self) -> int:
        return self.step % self.steps_per_epoch

    def get_state(self) -> dict:
        """JSON-serialisable position of the iterator: grain's state plus what it depends on."""
        return {
            "grain": self._iter.get_state(),
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_examples": self.num_examples,
            "global_batch_size": self.global_batch_size,
        }

    def set_state(self, state: dict) -> None:
        """Restores `get_state()` output; refuses a state saved for different data / batch."""
        for key in ("seed", "num_examples", "global_batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"iterator state has {key}={state[key]}, pipeline has {getattr(self, key)}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise ValueError(f"invalid iterator state epoch={epoch} position={position}")
        grain_state = state.get("grain") or {"next_index": epoch * self.steps_per_epoch + position}
        self._iter.set_state(grain_state)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    # ------------------------------------------------------------------ the grain dataset

    def dataset(self) -> grain.MapDataset:
        """Global step → this host's batch, as a grain MapDataset (infinite, random access)."""
        spe = self.steps_per_epoch
        steps = grain.MapDataset.range(spe).repeat()
        return steps.map_with_index(lambda i, _: self.batch_at(i // spe, i % spe))

    def epoch_order(self, epoch: int) -> grain.MapDataset:
        """The example order of one epoch (a lazy grain index shuffle seeded by seed, epoch)."""
        order = self._orders.get(epoch)
        if order is None:  # keep the latest epoch only (worker threads may race: both correct)
            ds = grain.MapDataset.range(self.num_examples)
            order = ds.shuffle(seed=_epoch_seed(self.seed, epoch))
            self._orders = {epoch: order}
        return order

    def global_indices(self, epoch: int, position: int) -> np.ndarray:
        """Example indices of the global batch; a short last batch wraps to the epoch start."""
        order, n, b = self.epoch_order(epoch), self.num_examples, self.global_batch_size
        return np.array([order[(position * b + j) % n] for j in range(b)], np.int64)

    def sample_passages(self, rec: Record, index: int, epoch: int) -> np.ndarray:
        """(1+k,) passage ids for one example: a positive, then k negatives, by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        pos, neg, k = np.array(rec.pos, np.int64), np.array(rec.neg, np.int64), self.num_negatives
        out = np.empty(1 + k, np.int64)
        out[0] = pos[rng.integers(len(pos))]
        if k == 0:
            return out
        if len(neg) >= k:
            out[1:] = rng.choice(neg, size=k, replace=False)
        elif len(neg):  # all of them once, then the rest drawn with replacement
            out[1:] = np.concatenate([rng.permutation(neg), rng.choice(neg, k - len(neg))])
        elif self.data.has_scores:
            raise InputError(f"query {rec.qid!r} has teacher scores but no negative to score")
        else:  # no negatives of its own: random passages of the dataset, never its positives
            out[1:] = self._random_passages(rng, pos, k)
        return out

    def _random_passages(self, rng, pos: np.ndarray, k: int) -> np.ndarray:
        if len(pos) >= self.num_passages:
            raise InputError("no passage other than the query's positives to use as negative")
        out = []
        while len(out) < k:
            cand = rng.integers(self.num_passages)
            if cand not in pos:
                out.append(cand)
        return np.array(out, np.int64)

    # ------------------------------------------------------------------ tokenisation

    def _tokenizers(self):
        """Per-thread tokenizer copies with truncation set once (worker threads share nothing)."""
        t = self._local
        if not hasattr(t, "q"):
            t.q = records.truncating_copy(self.tokenizer, self.q_max_length)
            t.p = records.truncating_copy(self.tokenizer, self.p_max_length)
        return t

    def _fixed_length(self, max_length: int) -> int | None:
        """With pad_multiple ≥ max_length every batch pads to max_length: no lengths needed."""
        return max_length if self.pad_multiple and self.pad_multiple >= max_length else None

    def _pad_len(self, longest: int, max_length: int) -> int:
        if self.pad_multiple:
            m = self.pad_multiple
            return min(-(-longest // m) * m, max_length)
        return tokenization.bucket_length(longest, self.buckets, max_length)

    def token_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(query lengths by example, passage lengths by id), truncated: computed once (cached in
        a store) so that every host derives the same padded shapes without tokenising them."""
        with self._lock:
            if self._lengths is None:
                self._lengths = records.token_lengths(
                    self.data, self.tokenizer, self.q_max_length, self.p_max_length
                )
        return self._lengths

    def _shapes(self, idx: np.ndarray, p_ids: np.ndarray) -> tuple[int, int]:
        lq, lp = self._fixed_length(self.q_max_length), self._fixed_length(self.p_max_length)
        if lq is None or lp is None:
            q_len, p_len = self.token_lengths()
            lq = lq or self._pad_len(int(q_len[idx].max()), self.q_max_length)
            lp = lp or self._pad_len(int(p_len[p_ids].max()), self.p_max_length)
        return lq, lp

    def _encode(self, texts: list[str], which: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        tok = getattr(self._tokenizers(), which)
        ids = [e.ids for e in tok.encode_batch(texts)]
        return tokenization.pad_batch(ids, length, self.pad_id)

    # ------------------------------------------------------------------ batch construction

    def batch_at(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """This host's slice of global batch `position` of `epoch` (pure: no state change)."""
        idx = self.global_indices(epoch, position)  # (B,)
        recs = [self.data.examples[int(i)] for i in idx]
        p_ids = np.stack(
            [self.sample_passages(r, int(i), epoch) for r, i in zip(recs, idx, strict=True)]
        )  # (B, 1+k)
        lq, lp = self._shapes(idx, p_ids)  # from the GLOBAL batch: equal on every host
        b, lo = self.local_batch_size, self.process_index * self.local_batch_size
        mine = slice(lo, lo + b)  # this host's rows of the global batch
        if self.packing:
            return {
                **self._labels(recs[mine], p_ids[mine]),
                **self._packed(idx, recs, p_ids, lq, lp),
            }
        recs, p_ids = recs[mine], p_ids[mine]  # (b, 1+k): only these are tokenised
        q_in, q_mask = self._encode([r.query for r in recs], "q", lq)
        p_in, p_mask = self._encode([self.data.passages[int(i)] for i in p_ids.flat], "p", lp)
        out = {
            "q_input_ids": q_in,  # (b, Lq)
            "q_attention_mask": q_mask,
            "p_input_ids": p_in.reshape(b, -1, lp),  # (b, 1+k, Lp)
            "p_attention_mask": p_mask.reshape(b, -1, lp),
        }
        return {**out, **self._labels(recs, p_ids)}

    def _labels(self, recs: list[Record], p_ids: np.ndarray) -> dict[str, np.ndarray]:
        """'p_ids', 'q_pos_ids' (and 'teacher_scores') of this host's rows."""
        b = len(recs)
        q_pos = np.full((b, self.max_positives), -1, np.int32)
        for row, r in enumerate(recs):
            q_pos[row, : len(r.pos)] = r.pos
        out = {"p_ids": p_ids.astype(np.int32), "q_pos_ids": q_pos}  # (b, 1+k), (b, P)
        if self.data.has_scores:
            out["teacher_scores"] = np.array(
                [[r.scores[int(i)] for i in row] for r, row in zip(recs, p_ids, strict=True)],
                np.float32,
            )  # (b, 1+k)
        return out

    def _rows_multiple(self) -> int:
        """Packed rows per side: a multiple of the devices (and hosts) ≥ B/8 (few jit shapes)."""
        m = math.lcm(jax.device_count(), self.process_count)
        return m * max(1, -(-(self.global_batch_size // 8) // m))

    def _packed(self, idx, recs: list[Record], p_ids: np.ndarray, lq: int, lp: int) -> dict:
        """This host's part of the GLOBAL batch's packed rows ('{q,p}_input_ids',
        '{q,p}_segment_ids' (R / hosts, L)) and its texts' global '{q,p}_text_row' /
        '_text_seg': every host lays out the whole batch from the token lengths, so the parts
        concatenate to the one-host batch; a host tokenises only the texts of its own rows."""
        q_len, p_len = self.token_lengths()
        b, k1 = self.local_batch_size, p_ids.shape[1]
        lo, tok, flat = self.process_index * b, self._tokenizers(), p_ids.reshape(-1)
        kw = dict(
            max_segments=self.pack_max_segments,
            rows_multiple=self._rows_multiple(),
            part=self.process_index,
            parts=self.process_count,
            pad=self.pad_id,
        )

        def encode(tokenizer, text_of):
            return lambda sel: [e.ids for e in tokenizer.encode_batch([text_of(i) for i in sel])]

        q_text = encode(tok.q, lambda j: recs[j].query)
        p_text = encode(tok.p, lambda j: self.data.passages[int(flat[j])])
        q = packing.packed_side(
            "q", q_len[idx], q_text, (b,), texts=slice(lo, lo + b), row_length=lq, **kw
        )
        mine = slice(lo * k1, (lo + b) * k1)  # (B (1+k),) passages, row-major
        p = packing.packed_side("p", p_len[flat], p_text, (b, k1), texts=mine, row_length=lp, **kw)
        return {**q, **p}
