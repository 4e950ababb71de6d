"""Training data stored once as a TFDS dataset: a passages table, and examples holding passage ids.

The library behind `python -m dualenc.build_tfds` (and `dualenc.data.store`) and the pipeline's
'tfds' / 'arrayrecord' formats. A store is a TFDS data dir holding one dataset with two configs,
each with the same splits (array_record, read with `tfds.data_source`, no TensorFlow):
`<name>/passages` (record i = the text of passage id i) and `<name>/examples` (one record per
query: qid, query, positive and negative passage ids, teacher scores by passage id); the
examples' metadata holds per split the counts and the most positives of any query. Passages
shared by many queries are stored once; the grain pipeline reads both tables by random access,
so nothing is copied into Python lists. Ids are assigned in first-seen order, exactly as the
in-memory path does, so both give the same batches.

Build from DPR / sentence-transformers / BEIR training files:
  python -m dualenc.build_tfds --src=train.jsonl --format=st --out=/data/mystore
and train with data.train.format='tfds', data.train.path=/data/mystore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tokenizers

from dualenc import tokenization
from dualenc.data import dpr, st_format
from dualenc.data.beir import load_beir
from dualenc.data.examples import TrainExample, passage_ids
from dualenc.io import InputError, atomic_dir

TEXT_FORMATS = ("dpr", "st_jsonl", "st_tsv", "st", "beir")

VERSION = 2  # 1: dualenc's own ArrayRecord layout (meta.json); 2: TFDS datasets


@dataclasses.dataclass(frozen=True)
class Record:
    """One query of a split: passage ids of its positives and of its own negatives (sorted, no
    positive among the negatives) and optional teacher scores per candidate id."""

    qid: str
    query: str
    pos: tuple[int, ...]
    neg: tuple[int, ...]
    scores: dict[int, float] | None = None


@dataclasses.dataclass
class Split:
    """A random-access view of one split: `examples[i]` → Record, `passages[j]` → text."""

    examples: Sequence[Record]
    passages: Sequence[str]
    max_positives: int
    has_scores: bool
    path: Path | None = None  # the store dir, None in memory
    name: str = "train"


def records_from_examples(examples: Sequence[TrainExample]) -> tuple[list[Record], list[str]]:
    """(records, passage texts by id); ids in first-seen order over positives then negatives."""
    if not examples:
        raise InputError("no training examples")
    ids = passage_ids(examples)
    records = []
    for ex in examples:
        if not ex.positives:
            raise InputError(f"query {ex.qid!r} has no positive passage")
        pos = sorted({ids[t] for t in ex.positives})
        neg = sorted({ids[t] for t in ex.negatives} - set(pos))
        scores = None
        if ex.scores is not None:
            scores = {ids[t]: float(s) for t, s in ex.scores.items() if t in ids}
            missing = [i for i in (*pos, *neg) if i not in scores]
            if missing:
                raise InputError(f"query {ex.qid!r}: no teacher score for {len(missing)} passages")
        records.append(Record(ex.qid, ex.query, tuple(pos), tuple(neg), scores))
    return records, list(ids)


def load_examples(path: str | os.PathLike, format: str, *, split: str = "train"):
    """Reads training examples from a file in one of TEXT_FORMATS (beir: `path` is the dir)."""
    loaders = {
        "dpr": dpr.load_dpr,
        "st_jsonl": st_format.load_st_jsonl,
        "st_tsv": st_format.load_st_tsv,
        "st": st_format.load_st,
        "beir": lambda p: st_format.examples_from_beir(load_beir(p, split)),
    }
    if format not in loaders:
        raise InputError(f"unknown training file format {format!r}; expected one of {TEXT_FORMATS}")
    return loaders[format](path)


def _has_scores(records: Sequence[Record]) -> bool:
    flags_ = {r.scores is not None for r in records}
    if len(flags_) > 1:
        raise InputError("teacher scores on some training examples only")
    return flags_ == {True}


def memory_split(examples: Sequence[TrainExample]) -> Split:
    """The in-memory path (small files, mined examples): the same view as a store split."""
    records, passages = records_from_examples(examples)
    max_pos = max(len(r.pos) for r in records)
    return Split(records, passages, max_pos, _has_scores(records))


# ----------------------------------------------------------------------------- TFDS store

STORE_NAME = "dualenc_train"
KIND = "dualenc.train"


def _features(config: str):
    import tensorflow_datasets as tfds  # noqa: PLC0415 - only store users pay for the import

    text, ids = tfds.features.Text(), tfds.features.Tensor(shape=(None,), dtype=np.int64)
    if config == "passages":
        return tfds.features.FeaturesDict({"text": text})
    scores = tfds.features.Tensor(  # float64 as raw bytes: tf.Example would round to float32
        shape=(None,), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
    )
    return tfds.features.FeaturesDict(
        {"qid": text, "query": text, "pos": ids, "neg": ids, "score_ids": ids, "scores": scores}
    )


def _row(r: Record) -> dict:
    keys = sorted(r.scores) if r.scores is not None else []
    scores = np.array([r.scores[k] for k in keys], np.float64)
    return {"qid": r.qid, "query": r.query, "pos": np.array(r.pos, np.int64),
            "neg": np.array(r.neg, np.int64), "score_ids": np.array(keys, np.int64),
            "scores": scores}  # fmt: skip


def _record(row: Mapping, has_scores: bool) -> Record:
    scores = None
    if has_scores:
        scores = dict(zip(row["score_ids"].tolist(), row["scores"].tolist(), strict=True))
    return Record(row["qid"].decode(), row["query"].decode(), tuple(row["pos"].tolist()),
                  tuple(row["neg"].tolist()), scores)  # fmt: skip


def build_store(
    examples_by_split: Mapping[str, Sequence[TrainExample]],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    name: str = STORE_NAME,
) -> Path:
    """Writes every split as a TFDS array_record dataset under out_dir (its TFDS data dir), with
    two configs: <name>/examples (one record per query: passage ids, teacher scores) and
    <name>/passages (record j = text of passage id j); atomically, deterministically."""
    from dualenc.data import tfds_io  # noqa: PLC0415 - tensorflow_datasets for store users only

    out, name = Path(out_dir), tfds_io.check_name(name)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to rebuild")
    meta = {"kind": KIND, "version": VERSION, "splits": {}}
    infos: dict[str, list] = {"examples": [], "passages": []}
    with atomic_dir(out) as tmp:
        for split, examples in examples_by_split.items():
            if not examples:
                raise InputError(f"split {split!r} has no examples")
            records, passages = records_from_examples(examples)
            tables = {"examples": map(_row, records), "passages": ({"text": t} for t in passages)}
            for config, rows in tables.items():
                vdir = tfds_io.version_dir(tmp, name, config)
                w = tfds_io.SplitWriter(vdir, name, split, _features(config), tfds_io.SHARD_BYTES)
                for row in rows:
                    w.write(row)
                infos[config].append(w.close())
            meta["splits"][split] = {
                "num_examples": len(records),
                "num_passages": len(passages),
                "max_positives": max(len(r.pos) for r in records),
                "has_scores": _has_scores(records),
            }
        for config, splits in infos.items():
            vdir = tfds_io.version_dir(tmp, name, config)
            tfds_io.write_info(vdir, name, _features(config), splits, config=config, metadata=meta,
                               description=f"dualenc training data: {config}")  # fmt: skip
    return out


class _Decoded(Sequence):
    """A lazy, decoding view of a random-access source (no copy)."""

    def __init__(self, source, decode: Callable):
        self.source, self.decode = source, decode

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        if not 0 <= i < len(self.source):
            raise IndexError(i)
        return self.decode(self.source[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _store_dirs(path: Path) -> dict[str, Path]:
    from dualenc.data import tfds_io  # noqa: PLC0415

    dirs = {d.parent.name: d for d in tfds_io.find_datasets(path, configs=True)}
    return {c: dirs[c] for c in ("examples", "passages") if c in dirs}


def is_store(path: str | os.PathLike) -> bool:
    """True for a TFDS training dataset (examples + passages configs) at or under `path`."""
    return len(_store_dirs(Path(path))) == 2


def open_split(path: str | os.PathLike, split: str = "train") -> Split:
    """Opens one split of a TFDS training dataset for random access (`tfds.data_source`); reads
    only its metadata up front. `path` is the data dir given to build_store (or <name> in it)."""
    from dualenc.data import tfds_io  # noqa: PLC0415

    path = Path(path)
    dirs = _store_dirs(path)
    if len(dirs) != 2:
        old = " (a store of an older dualenc: rebuild it)" if (path / "meta.json").exists() else ""
        raise InputError(
            f"not a TFDS training dataset (<name>/examples and <name>/passages){old}; build one "
            "with python -m dualenc.build_tfds",
            path=path,
        )
    info, ex = tfds_io.open_source(dirs["examples"], split)
    _, ps = tfds_io.open_source(dirs["passages"], split)
    m = info.metadata["splits"][split]
    if (len(ex), len(ps)) != (m["num_examples"], m["num_passages"]):
        raise InputError(f"split {split!r} does not match its metadata", path=path)
    has_scores = bool(m["has_scores"])
    return Split(
        examples=_Decoded(ex, lambda row: _record(row, has_scores)),
        passages=_Decoded(ps, lambda row: row["text"].decode()),
        max_positives=int(m["max_positives"]),
        has_scores=has_scores,
        path=path,
        name=split,
    )


# ----------------------------------------------------------------------------- token lengths


def truncating_copy(tok: tokenizers.Tokenizer, max_length: int) -> tokenizers.Tokenizer:
    """A private tokenizer copy that truncates at max_length (the original is left untouched)."""
    out = tokenizers.Tokenizer.from_str(tok.to_str())
    out.no_padding()
    out.enable_truncation(max_length)
    return out


def _lengths_of(texts: Sequence[str], tok, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(texts), np.int32)
    for lo in range(0, len(texts), chunk):
        batch = [texts[i] for i in range(lo, min(lo + chunk, len(texts)))]
        out[lo : lo + len(batch)] = [len(e.ids) for e in tok.encode_batch(batch)]
    return out


def token_lengths(split: Split, tok, q_max_length: int, p_max_length: int):
    """(query lengths by example, passage lengths by id) in tokens, truncated: what the pipeline
    pads by. Cached in a store dir by tokenizer and max lengths (`--tokenizer` at build time)."""
    key = f"{tok.to_str()}|{q_max_length}|{p_max_length}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = split.path / f"{split.name}.lengths-{digest}.npz" if split.path else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return z["q"], z["p"]
    queries = _Decoded(split.examples, lambda r: r.query)
    q = _lengths_of(queries, truncating_copy(tok, q_max_length))
    p = _lengths_of(split.passages, truncating_copy(tok, p_max_length))
    if cache is not None and os.access(split.path, os.W_OK):
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.npz")
        np.savez(tmp, q=q, p=p)
        os.replace(tmp, cache)  # several hosts may write it: each write is whole
    return q, p


def build_from_files(
    inputs: Mapping[str, str | os.PathLike],
    format: str,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    name: str = STORE_NAME,
    tokenizer: str | os.PathLike | None = None,
    q_max_length: int = 32,
    p_max_length: int = 128,
) -> tuple[Path, dict[str, int]]:
    """Reads {split: training file} and stores them under out_dir; with a tokenizer (model dir),
    caches the token lengths training pads by. Returns (store dir, {split: number of examples})."""
    by_split = {s: load_examples(p, format, split=s) for s, p in inputs.items()}
    out = build_store(by_split, out_dir, overwrite=overwrite, name=name)
    if tokenizer:
        tok = tokenization.load_tokenizer(tokenizer)
        for s in by_split:
            token_lengths(open_split(out, s), tok, q_max_length, p_max_length)
    return out, {s: len(exs) for s, exs in by_split.items()}
