"""Cross-encoder training data: labelled pair files, or retrieval groups (query, positive, k
negatives) from the DPR / sentence-transformers / BEIR readers, tokenised as (query, passage)
pairs.

`CrossPipeline` is deterministic and resumable like `TrainPipeline`: batch n is a pure function of
(seed, n) — the epoch's row order is a seeded permutation, a group's positive and negatives are
drawn from (seed, epoch, row) — so the iterator state is just `{"step": n}`. Every host tokenises
the global batch (cheap) to agree on the pad length, then keeps its own slice of rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from dualenc import tokenization
from dualenc.data import negatives
from dualenc.data import pairs as pairs_lib
from dualenc.data.beir import BeirDataset, load_beir
from dualenc.data.examples import TrainExample
from dualenc.data.records import load_examples
from dualenc.data.st_format import examples_from_beir
from dualenc.data.stepped import SteppedBatches
from dualenc.io import InputError

BUCKET = 16  # batch pad lengths are multiples of this (see CrossPipeline._bucket)


@dataclasses.dataclass
class PairData:
    """Labelled pair rows: texts and class ids, or graded targets in [0, 1]."""

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray  # (N,) int32 class ids, or float32 targets (cross.label_scale > 0)
    source: str


def label_names(xcfg) -> list[str]:
    """Class names by id: `cross.label_names`, else '0', '1', ... (2 for a 1-logit model)."""
    if xcfg.label_names:
        return [str(n) for n in xcfg.label_names]
    return [str(i) for i in range(max(int(xcfg.num_labels), 2))]


def read_pair_data(path: str, xcfg) -> PairData:
    """A labelled pair file (TSV/CSV/JSONL) with `cross.text_a/text_b/label` columns (or a known
    layout); labels outside `label_names` (or, graded, outside [0, cross.label_scale]) raise
    InputError naming file:line:field."""
    p = pairs_lib.read_pairs(
        path, text_a=xcfg.text_a or None, text_b=xcfg.text_b or None, label=xcfg.label or None
    )
    scale = float(xcfg.label_scale)
    y = pairs_lib.label_scores(p, scale) if scale > 0 else pairs_lib.label_ids(p, label_names(xcfg))
    return PairData(p.text_a, p.text_b, y, str(path))


def symmetrize(data: PairData) -> PairData:
    """Each pair in both orders, (a, b) then (b, a) after all of them: for symmetric relations
    (paraphrase, duplicate), whose label does not depend on the order."""
    return PairData(
        data.text_a + data.text_b,
        data.text_b + data.text_a,
        np.concatenate([data.labels, data.labels]),
        data.source,
    )


def holdout_qids(qids: Sequence[str], n: int, seed: int) -> set[str]:
    """`n` query ids drawn with a fixed seed (sorted ids first, so file order does not matter)."""
    qids = sorted(set(qids))
    if n >= len(qids):
        raise InputError(f"cross.dev_queries={n} leaves no training queries (of {len(qids)})")
    rng = np.random.default_rng([int(seed), 7919])
    return {qids[i] for i in rng.choice(len(qids), n, replace=False)}


def retrieval_examples(config) -> tuple[list[TrainExample], BeirDataset | None]:
    """(training examples, dev BEIR dataset held out of train or None). BEIR training data gets
    negatives mined per `data.mine_negatives` (`negatives.config_negatives`)."""
    d, x = config.data, config.cross
    if d.train.format == "beir":
        ds = load_beir(d.train.path, d.train.split, allow_empty_docs=True)
        examples = examples_from_beir(ds, negatives.config_negatives(ds, d))
    else:
        ds, examples = None, list(load_examples(d.train.path, d.train.format, split=d.train.split))
    n_dev = int(x.dev_queries)
    if not n_dev:
        return examples, None
    if ds is None:
        raise InputError("cross.dev_queries needs BEIR training data", path=d.train.path)
    dev = holdout_qids([e.qid for e in examples], n_dev, int(config.seed))
    train = [e for e in examples if e.qid not in dev]
    qrels = {q: ds.qrels[q] for q in sorted(dev)}
    dev_ds = BeirDataset(corpus=ds.corpus, queries={q: ds.queries[q] for q in qrels}, qrels=qrels)
    return train, dev_ds


class CrossPipeline(SteppedBatches):
    """Per-host batches {input_ids, attention_mask, token_type_ids: (b, G, L) int32[, labels
    (b,) int32 class ids or float32 graded targets]}; G = 1 for pairs, 1 + num_negatives for
    groups (candidate 0 the positive)."""

    def __init__(
        self,
        tokenizer,
        *,
        global_batch_size: int,
        max_length: int,
        seed: int,
        pairs: PairData | None = None,
        examples: Sequence[TrainExample] | None = None,
        num_negatives: int = 0,
        fixed_length: bool = False,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if (pairs is None) == (examples is None):
            raise ValueError("CrossPipeline needs exactly one of `pairs` or `examples`")
        self.tok, self.pairs, self.examples = tokenizer, pairs, list(examples or [])
        self.global_batch, self.max_length = int(global_batch_size), int(max_length)
        self.seed, self.k, self.fixed = int(seed), int(num_negatives), bool(fixed_length)
        self.pi = jax.process_index() if process_index is None else int(process_index)
        self.pc = jax.process_count() if process_count is None else int(process_count)
        if self.global_batch % self.pc:
            raise ValueError(f"batch {self.global_batch} not divisible by {self.pc} processes")
        self.n = len(pairs.labels) if pairs is not None else len(self.examples)
        if self.n < self.global_batch:
            raise InputError(
                f"{self.n} training rows are fewer than one batch (train.batch_size="
                f"{self.global_batch})",
                path=pairs.source if pairs is not None else None,
            )
        if self.examples:
            pool = dict.fromkeys(t for e in self.examples for t in (*e.positives, *e.negatives))
            self.pool = list(pool)
        self._step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch  # the last partial batch is dropped

    def rows_at(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, the global batch's row indices) of global step `step`."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        return epoch, order[pos * self.global_batch : (pos + 1) * self.global_batch]

    def _group(self, i: int, epoch: int) -> list[tuple[str, str]]:
        """(query, positive) then k negatives: mined ones first (sampled), random pool fill."""
        e = self.examples[i]
        rng = np.random.default_rng([self.seed, epoch, int(i), 1])
        pos = e.positives[int(rng.integers(len(e.positives)))]
        negs = list(e.negatives)
        if len(negs) > self.k:
            negs = [negs[j] for j in sorted(rng.choice(len(negs), self.k, replace=False))]
        banned = set(e.positives) | set(negs)
        while len(negs) < self.k:
            cand = self.pool[int(rng.integers(len(self.pool)))]
            if cand not in banned or len(self.pool) <= len(banned):
                negs.append(cand)
                banned.add(cand)
        return [(e.query, t) for t in (pos, *negs)]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        epoch, rows = self.rows_at(step)
        if self.pairs is not None:
            groups = [[(self.pairs.text_a[i], self.pairs.text_b[i])] for i in rows]
        else:
            groups = [self._group(int(i), epoch) for i in rows]
        g = len(groups[0])
        flat = [p for grp in groups for p in grp]
        ids, types = tokenization.tokenize_pairs(
            self.tok, [a for a, _ in flat], [b for _, b in flat], self.max_length
        )
        longest = max(len(s) for s in ids)
        length = self.max_length if self.fixed else self._bucket(longest)
        b = self.global_batch // self.pc
        lo, hi = self.pi * b * g, (self.pi + 1) * b * g  # this host's rows
        pad = tokenization.pad_id(self.tok)
        input_ids, mask = tokenization.pad_batch(ids[lo:hi], length, pad)
        type_ids, _ = tokenization.pad_batch(types[lo:hi], length, 0)
        out = {
            "input_ids": input_ids.reshape(b, g, length),
            "attention_mask": mask.reshape(b, g, length),
            "token_type_ids": type_ids.reshape(b, g, length),
        }
        if self.pairs is not None:
            y = self.pairs.labels[rows][self.pi * b : (self.pi + 1) * b]
            out["labels"] = y.astype(np.float32 if y.dtype.kind == "f" else np.int32)
        return out

    def _bucket(self, longest: int) -> int:
        """`longest` rounded up to a multiple of BUCKET (≤ max_length): at most
        max_length / BUCKET shapes, and random batches of short pairs pad little."""
        return min(-(-longest // BUCKET) * BUCKET, self.max_length)
