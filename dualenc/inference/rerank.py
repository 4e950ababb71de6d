"""Jitted, sharded cross-encoder reranking of retrieval runs (e.g. dense top-500 → top-5).

A cross-encoder reads (query, passage) as one sequence and gives one relevance logit. Pairs are
padded to FIXED length buckets (`RERANK_BUCKETS`, capped at the model's max_length) and every
batch to one fixed row count, so reranking any number of queries compiles at most one program
per bucket. Batches are split over a 1-D mesh of all devices of all hosts and gathered back.

`rerank_run(..., cache_dir=D)` keeps relevance scores on disk (`rerank_cache`), keyed by
the model hash (weights + tokenizer + max_length) and the (query, doc) pair, so a rerun scores
nothing it has scored before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tokenizers
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from dualenc import multihost, tokenization
from dualenc.inference import rerank_cache
from dualenc.inference.batching import put
from dualenc.io import InputError, open_text
from dualenc.models import loading
from dualenc.models.convert import WeightsError, params_from_state_dict
from dualenc.models.cross_encoder import CrossEncoder
from dualenc.models.registry import get_arch
from dualenc.runs import Run

RERANK_BUCKETS = (64, 128, 192, 256, 384, 512)
_STEPS: dict[Any, Any] = {}  # (CrossEncoder, mesh) -> jitted sharded scoring step


@dataclasses.dataclass(eq=False)
class Reranker:
    """A loaded cross-encoder: module description, params, tokenizer and pair length limit.

    `mesh`: the devices that scoring is split over (None: all devices of all hosts)."""

    ce: CrossEncoder
    params: Any
    tokenizer: tokenizers.Tokenizer
    max_length: int
    source: str = "in-memory"
    mesh: Mesh | None = None

    def __post_init__(self):
        ce = self.ce
        # (params, ids, mask, token types) -> logits, jitted once per Reranker (classify uses it)
        self.score_logits = jax.jit(lambda p, ids, mask, types: ce.score(p, ids, mask, types))
        self._placed: dict[Any, Any] = {}
        self._hash: str | None = None

    @classmethod
    def from_params(
        cls,
        ce: CrossEncoder,
        params,
        tokenizer: tokenizers.Tokenizer,
        max_length: int,
        source: str = "in-memory",
    ) -> Reranker:
        """A Reranker over in-memory params (e.g. a training state's), without a saved dir."""
        return cls(ce, params, tokenizer, int(max_length), source)

    def buckets(self) -> tuple[int, ...]:
        """The padded lengths this reranker uses: RERANK_BUCKETS capped at max_length."""
        return tuple(sorted({min(b, self.max_length) for b in RERANK_BUCKETS}))

    def model_hash(self) -> str:
        """sha256 over weights, tokenizer, architecture config, labels and max_length."""
        if self._hash is None:
            h = hashlib.sha256()
            for path, leaf in sorted(
                loading.flatten_params(multihost.to_host(self.params)).items()
            ):
                a = np.ascontiguousarray(np.asarray(leaf))
                h.update(f"{path}:{a.dtype}:{a.shape};".encode())
                h.update(a.tobytes())
            h.update(self.tokenizer.to_str().encode())
            h.update(f"{self.ce.arch}|{self.ce.config!r}|{self.ce.num_labels}".encode())
            h.update(f"|max_length={self.max_length}".encode())
            self._hash = h.hexdigest()[:32]
        return self._hash


def load_reranker(
    name_or_path: str | Path, *, dtype: str = "float32", max_length: int | None = None
) -> Reranker:
    """Loads a transformers `*ForSequenceClassification` dir (or hub id) as a Reranker."""
    root = loading.resolve_model_dir(name_or_path)
    cfg_path = root / "config.json"
    hf_cfg = loading.read_json(cfg_path, what="config.json (the model config)")
    try:
        arch = get_arch(hf_cfg.get("model_type"))
    except ValueError as e:
        raise InputError(str(e), path=cfg_path, field="model_type") from None
    config = dataclasses.replace(arch.config_cls.from_hf(hf_cfg), dtype=dtype)
    sd = loading.read_state_dict(root)
    # transformers 5 writes neither num_labels nor id2label for its default of 2 labels: the
    # head's bias says how many there are.
    head = sd.get("classifier.bias")
    num_labels = int(
        np.shape(head)[0]
        if head is not None
        else hf_cfg.get("num_labels") or len(hf_cfg.get("id2label") or {}) or 2
    )
    ce = CrossEncoder(arch.model_type, config, num_labels=num_labels)
    try:
        params = params_from_state_dict(sd, ce.abstract_params(), prefix="")
    except WeightsError as e:
        raise WeightsError(
            e.missing, e.unexpected, e.mismatched, context=f"{root} as a cross-encoder"
        ) from None
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    return Reranker(
        ce,
        params,
        loading.read_tokenizer(root),
        min(int(max_length or limit), limit),
        str(name_or_path),
    )


def relevance(logits: np.ndarray) -> np.ndarray:
    """One relevance score per pair: the logit (1 label) or the positive-minus-negative logit."""
    if logits.shape[-1] == 1:
        return logits[:, 0]
    if logits.shape[-1] == 2:
        return logits[:, 1] - logits[:, 0]
    raise ValueError(f"a reranker needs 1 or 2 labels, this model has {logits.shape[-1]}")


def scoring_mesh(rr: Reranker) -> Mesh | None:
    """The mesh scoring splits batches over: `rr.mesh`, else all devices (None for one)."""
    if rr.mesh is not None:
        return rr.mesh if rr.mesh.size > 1 else None
    devs = jax.devices()
    return Mesh(np.array(devs), ("data",)) if len(devs) > 1 else None


def score_step(ce: CrossEncoder, mesh: Mesh | None):
    """The jitted (params, ids, mask, types) -> (B, labels) step, batch split over `mesh`.

    One step per (model description, mesh), so new params (another eval) reuse its programs."""
    key = (ce, mesh)
    try:
        hash(key)
    except TypeError:  # an unhashable config: one step per CrossEncoder object
        key = (id(ce), mesh)
    if key not in _STEPS:
        fn = lambda p, ids, mask, types: ce.score(p, ids, mask, types)  # noqa: E731
        if mesh is None:
            _STEPS[key] = jax.jit(fn)
        else:
            rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
            rep = NamedSharding(mesh, PartitionSpec())
            _STEPS[key] = jax.jit(fn, in_shardings=(rep, rows, rows, rows), out_shardings=rows)
    return _STEPS[key]


def _placed_params(rr: Reranker, mesh: Mesh | None):
    """The params placed once per mesh (replicated over it)."""
    if mesh not in rr._placed:
        if mesh is None:
            rr._placed[mesh] = rr.params
        else:
            rr._placed[mesh] = put(rr.params, NamedSharding(mesh, PartitionSpec()))
    return rr._placed[mesh]


def batch_rows(batch_size: int, mesh: Mesh | None) -> int:
    """The fixed row count of every batch: batch_size rounded up to a multiple of the devices."""
    ndev = mesh.size if mesh is not None else 1
    return math.ceil(max(int(batch_size), 1) / ndev) * ndev


def score_pairs(
    rr: Reranker,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Logits (N, num_labels) for (query, passage) pairs, in input order.

    Every process must call it with the same pairs; all get the full result."""
    ids, types = tokenization.tokenize_pairs(rr.tokenizer, queries, passages, rr.max_length)
    out = np.zeros((len(ids), rr.ce.num_labels), np.float32)
    if not ids:
        return out
    mesh = scoring_mesh(rr)
    step, params = score_step(rr.ce, mesh), _placed_params(rr, mesh)
    rows = batch_rows(batch_size, mesh)
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names)) if mesh is not None else None
    pad = tokenization.pad_id(rr.tokenizer)
    batches = tokenization.bucket_batches(
        [len(s) for s in ids], rows, rr.buckets(), max_length=rr.max_length
    )
    pending = []  # dispatched, not yet fetched: overlaps host padding with device compute
    bar = tqdm(total=len(ids), desc="rerank", disable=not progress or not multihost.is_main())
    for idx, padded in batches:
        arrays = _pad_rows(ids, types, idx, padded, rows, pad)
        if sharding is not None:
            arrays = [put(a, sharding) for a in arrays]
        pending.append((idx, step(params, *arrays)))
        while len(pending) > 2:
            _fetch(pending.pop(0), out, bar)
    while pending:
        _fetch(pending.pop(0), out, bar)
    bar.close()
    return out


def warm_up(rr: Reranker, batch_size: int = 32) -> int:
    """Compiles the scoring step for every length bucket at the row count `score_pairs(...,
    batch_size=batch_size)` uses, so a server scores any pairs without compiling. Returns the
    number of shapes compiled."""
    mesh = scoring_mesh(rr)
    step, params = score_step(rr.ce, mesh), _placed_params(rr, mesh)
    rows = batch_rows(batch_size, mesh)
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names)) if mesh is not None else None
    pad = tokenization.pad_id(rr.tokenizer)
    for length in rr.buckets():
        arrays = _pad_rows([[pad]], [[0]], [0], length, rows, pad)
        if sharding is not None:
            arrays = [put(a, sharding) for a in arrays]
        multihost.to_host(step(params, *arrays))
    return len(rr.buckets())


def _pad_rows(ids, types, idx, padded: int, rows: int, pad: int) -> list[np.ndarray]:
    """(ids, mask, types) of shape (rows, padded); filler rows attend one [PAD] (no NaN)."""
    b_ids, mask = tokenization.pad_batch([ids[i] for i in idx], padded, pad)
    b_types, _ = tokenization.pad_batch([types[i] for i in idx], padded, 0)
    n = len(idx)
    if rows > n:
        fill = ((0, rows - n), (0, 0))
        b_ids = np.pad(b_ids, fill, constant_values=pad)
        mask, b_types = np.pad(mask, fill), np.pad(b_types, fill)
        mask[n:, 0] = 1
    return [b_ids, mask, b_types]


def _fetch(item, out: np.ndarray, bar) -> None:
    idx, logits = item
    out[idx] = multihost.to_host(logits)[: len(idx)]  # gathered across hosts when sharded
    bar.update(len(idx))


def _run_pairs(run, queries, passages, top_k: int, source) -> tuple[list, dict]:
    """[(qid, did)] to rescore (each query's top_k) and {qid: [tail doc ids]}; checks ids."""
    keys, tails = [], {}
    for qid, docs in run.items():
        if qid not in queries:
            raise _unknown(f"run names query {qid!r}, which is not among the queries", source, qid)
        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
        for did, _ in ranked[:top_k]:
            if did not in passages:
                raise _unknown(
                    f"run names doc {did!r} (query {qid!r}), not in the corpus", source, qid, did
                )
            keys.append((qid, did))
        tails[qid] = [did for did, _ in ranked[top_k:]]
    return keys, tails


def _unknown(msg: str, source, qid: str, did: str | None = None) -> InputError:
    """An InputError naming the run file's line of (qid[, did]) when the run came from a file."""
    if source is None:
        return InputError(msg)
    with open_text(source) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if len(parts) >= 3 and parts[0] == qid and (did is None or parts[2] == did):
                field = "query id" if did is None else "doc id"
                return InputError(msg, path=source, line=lineno, field=field)
    return InputError(msg, path=source)


def rerank_run(
    rr: Reranker,
    run: Mapping[str, Mapping[str, float]],
    queries: Mapping[str, str],
    passages: Mapping[str, str],
    *,
    top_k: int = 100,
    batch_size: int = 32,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
) -> Run:
    """Rescores each query's `top_k` docs with the cross-encoder; the rest keep their order below.

    `passages` maps doc id → the text the cross-encoder reads (title + ' ' + text for BEIR).
    `cache_dir`: reuse / store relevance scores there (None: no cache). `source`: the TREC file
    the run was read from, so that an unknown id is reported as file:line.
    """
    keys, tails = _run_pairs(run, queries, passages, top_k, source)
    scores = np.zeros(len(keys), np.float32)
    cache = rerank_cache.ScoreCache(cache_dir, rr) if cache_dir is not None else None
    todo = cache.lookup(keys, queries, passages, scores) if cache else np.arange(len(keys))
    if len(todo):
        fresh = relevance(
            score_pairs(
                rr,
                [queries[keys[i][0]] for i in todo],
                [passages[keys[i][1]] for i in todo],
                batch_size=batch_size,
                progress=progress,
            )
        )
        scores[todo] = fresh
        if cache:
            cache.store([keys[i] for i in todo], queries, passages, fresh)
    out: Run = {qid: {} for qid in run}
    for (qid, did), s in zip(keys, scores, strict=True):
        out[qid][did] = float(s)
    for qid, tail in tails.items():
        floor = min(out[qid].values(), default=0.0)
        for rank, did in enumerate(tail, start=1):
            out[qid][did] = floor - rank  # below every reranked doc, original order kept
    return out
