"""The training input pipeline: TrainExamples → per-host numpy batches for a dual encoder.

Everything a batch contains is a pure function of (seed, epoch, position): the epoch order is a
grain index shuffle seeded by (seed, epoch), and each query's positive and k hard negatives are
drawn by (seed, epoch, example index). So the iterator state is just {epoch, position}, resuming
is exact, and every host computes the same global batch and keeps its own slice of rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import grain
import numpy as np

from dualenc import tokenization
from dualenc.data.examples import TrainExample, passage_ids
from dualenc.io import InputError

FORMATS = ("dpr", "st_jsonl", "st_tsv", "st", "beir", "tfds")


def load_examples(path: str | os.PathLike, format: str, *, split: str = "train"):
    """Reads training examples in one of FORMATS (beir/tfds: `path` is the dataset dir)."""
    if format == "dpr":
        from dualenc.data.dpr import load_dpr

        return load_dpr(path)
    if format in ("st_jsonl", "st_tsv", "st"):
        from dualenc.data import st_format

        loader = {"st_jsonl": st_format.load_st_jsonl, "st_tsv": st_format.load_st_tsv}
        return loader.get(format, st_format.load_st)(path)
    if format == "beir":
        from dualenc.data.beir import load_beir
        from dualenc.data.st_format import examples_from_beir

        return examples_from_beir(load_beir(path, split))
    if format == "tfds":
        from dualenc.data.tfds_builders import as_source

        return as_source(path, split)
    raise InputError(f"unknown training data format {format!r}; expected one of {FORMATS}")


def _as_example(rec) -> TrainExample:
    """TrainExample, or a record of a TFDS source (dict, text as bytes / JSON strings)."""
    if isinstance(rec, TrainExample):
        return rec
    from dualenc.data.tfds_builders import example_from_record

    return example_from_record(rec)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]) & 0x7FFFFFFF


class TrainPipeline:
    """Deterministic, resumable iterator of dual-encoder training batches (numpy, per host).

    Yields {'q_input_ids' (b, Lq), 'q_attention_mask', 'p_input_ids' (b, 1+k, Lp),
    'p_attention_mask', 'p_ids' (b, 1+k)} int32 with b = global_batch_size / process_count;
    p[:, 0] is the positive. Lq/Lp are the longest in the GLOBAL batch rounded up to a bucket
    (≤ max length), so all hosts agree on shapes and jit sees few of them.
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
        buckets: Sequence[int] = tokenization.DEFAULT_BUCKETS,
        pad_multiple: int | None = None,
    ):
        if examples is None:
            if path is None:
                raise ValueError("TrainPipeline needs `examples` or `path`")
            examples = load_examples(path, format, split=split)
        self.examples = [_as_example(examples[i]) for i in range(len(examples))]
        if tokenizer is None:
            raise ValueError("TrainPipeline needs a tokenizer")
        self.tokenizer = tokenizer
        self.pad_id = tokenization.pad_id(tokenizer)
        gbs = global_batch_size if global_batch_size is not None else batch_size
        if gbs is None or gbs <= 0:
            raise ValueError(f"global_batch_size must be positive, got {gbs}")
        self.global_batch_size, self.num_negatives = int(gbs), int(num_negatives)
        self.q_max_length, self.p_max_length = int(q_max_length), int(p_max_length)
        self.seed, self.drop_remainder = int(seed), bool(drop_remainder)
        self.buckets, self.pad_multiple = tuple(buckets), pad_multiple
        self._init_hosts(process_index, process_count)
        self._index_passages()
        self.epoch, self.position = 0, 0

    def _init_hosts(self, process_index, process_count):
        if process_index is None or process_count is None:
            import jax

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

    def _index_passages(self):
        """Global text → id map; per-example positive ids and negatives minus own positives."""
        if not self.examples:
            raise InputError("no training examples")
        self.passage_id = passage_ids(self.examples)
        self.texts = list(self.passage_id)  # id → text
        self._pos, self._neg = [], []
        for ex in self.examples:
            if not ex.positives:
                raise InputError(f"query {ex.qid!r} has no positive passage")
            pos = np.array(sorted({self.passage_id[t] for t in ex.positives}), np.int64)
            neg = [self.passage_id[t] for t in ex.negatives]
            neg = np.array(sorted(set(neg) - set(pos.tolist())), np.int64)
            self._pos.append(pos)
            self._neg.append(neg)
        if self.num_negatives > 0 and len(self.texts) < 2:
            raise InputError("need at least two distinct passages to sample negatives")
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{self.num_examples} examples < global batch size "
                f"{self.global_batch_size} with drop_remainder=True"
            )

    # ------------------------------------------------------------------ sizes and state

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    @property
    def num_passages(self) -> int:
        return len(self.texts)

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_examples, self.global_batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def get_state(self) -> dict:
        """JSON-serialisable position of the iterator (the next batch to yield)."""
        return {
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
        self.epoch, self.position = epoch, position

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.epoch, self.position)
        self.position += 1
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    # ------------------------------------------------------------------ batch construction

    def epoch_order(self, epoch: int) -> grain.MapDataset:
        """The example order of one epoch (a lazy grain index shuffle seeded by seed, epoch)."""
        ds = grain.MapDataset.range(self.num_examples)
        return ds.shuffle(seed=_epoch_seed(self.seed, epoch))

    def global_indices(self, epoch: int, position: int) -> np.ndarray:
        """Example indices of the global batch; a short last batch wraps to the epoch start."""
        order, n, b = self.epoch_order(epoch), self.num_examples, self.global_batch_size
        return np.array([order[(position * b + j) % n] for j in range(b)], np.int64)

    def sample_passages(self, index: int, epoch: int) -> np.ndarray:
        """(1+k,) passage ids for one example: a positive, then k negatives, by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        pos, neg, k = self._pos[index], self._neg[index], self.num_negatives
        out = np.empty(1 + k, np.int64)
        out[0] = pos[rng.integers(len(pos))]
        if k == 0:
            return out
        if len(neg) >= k:
            out[1:] = rng.choice(neg, size=k, replace=False)
        elif len(neg):  # all of them once, then the rest drawn with replacement
            out[1:] = np.concatenate([rng.permutation(neg), rng.choice(neg, k - len(neg))])
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

    def _pad_len(self, longest: int, max_length: int) -> int:
        if self.pad_multiple:
            m = self.pad_multiple
            return min(-(-longest // m) * m, max_length)
        return tokenization.bucket_length(longest, self.buckets, max_length)

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = tokenization.tokenize(self.tokenizer, texts, max_length)
        padded = self._pad_len(max(len(s) for s in ids), max_length)
        return tokenization.pad_batch(ids, padded, self.pad_id)

    def batch_at(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """This host's slice of global batch `position` of `epoch` (pure: no state change)."""
        idx = self.global_indices(epoch, position)  # (B,)
        p_ids = np.stack([self.sample_passages(int(i), epoch) for i in idx])  # (B, 1+k)
        b, lo = self.local_batch_size, self.process_index * self.local_batch_size
        q_ids, q_mask = self._tokenize([self.examples[i].query for i in idx], self.q_max_length)
        p_ids_flat = p_ids.reshape(-1)
        p_in, p_mask = self._tokenize([self.texts[i] for i in p_ids_flat], self.p_max_length)
        k1 = p_ids.shape[1]
        return {
            "q_input_ids": q_ids[lo : lo + b],  # (b, Lq)
            "q_attention_mask": q_mask[lo : lo + b],
            "p_input_ids": p_in.reshape(-1, k1, p_in.shape[-1])[lo : lo + b],  # (b, 1+k, Lp)
            "p_attention_mask": p_mask.reshape(-1, k1, p_mask.shape[-1])[lo : lo + b],
            "p_ids": p_ids[lo : lo + b].astype(np.int32),  # (b, 1+k)
        }
