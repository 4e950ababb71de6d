"""Jitted cross-encoder reranking of retrieval runs (e.g. dense top-100 → reranked top-10).

A cross-encoder reads (query, passage) as one sequence and gives one relevance logit. Pairs are
length-bucketed like corpus encoding, so jit compiles one program per bucket, not per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tokenizers
from tqdm.auto import tqdm

from dualenc import tokenization
from dualenc.io import InputError
from dualenc.models import loading
from dualenc.models.convert import WeightsError, params_from_state_dict
from dualenc.models.cross_encoder import CrossEncoder
from dualenc.models.registry import get_arch

Run = dict[str, dict[str, float]]


@dataclasses.dataclass
class Reranker:
    """A loaded cross-encoder: module description, params, tokenizer and pair length limit."""

    ce: CrossEncoder
    params: Any
    tokenizer: tokenizers.Tokenizer
    max_length: int
    source: str

    def __post_init__(self):
        ce = self.ce
        self._score = jax.jit(lambda p, ids, mask, types: ce.score(p, ids, mask, types))


def load_reranker(
    name_or_path: str | Path, *, dtype: str = "float32", max_length: int | None = None
) -> Reranker:
    """Loads a transformers `*ForSequenceClassification` dir (or hub id) as a Reranker."""
    root = loading._resolve(name_or_path)
    cfg_path = root / "config.json"
    hf_cfg = loading._read_json(cfg_path, what="config.json (the model config)")
    try:
        arch = get_arch(hf_cfg.get("model_type"))
    except ValueError as e:
        raise InputError(str(e), path=cfg_path, field="model_type") from None
    config = dataclasses.replace(arch.config_cls.from_hf(hf_cfg), dtype=dtype)
    num_labels = int(hf_cfg.get("num_labels") or len(hf_cfg.get("id2label") or {}) or 1)
    ce = CrossEncoder(arch.model_type, config, num_labels=num_labels)
    sd = loading._read_state_dict(root)
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
        loading._load_tokenizer(root),
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


def score_pairs(
    rr: Reranker,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Logits (N, num_labels) for (query, passage) pairs, in input order."""
    ids, types = tokenization.tokenize_pairs(rr.tokenizer, queries, passages, rr.max_length)
    pad = tokenization.pad_id(rr.tokenizer)
    out = np.zeros((len(ids), rr.ce.num_labels), np.float32)
    batches = tokenization.bucket_batches(
        [len(s) for s in ids], batch_size, max_length=rr.max_length
    )
    for idx, padded in tqdm(batches, desc="rerank", disable=not progress):
        b_ids, mask = tokenization.pad_batch([ids[i] for i in idx], padded, pad)
        b_types, _ = tokenization.pad_batch([types[i] for i in idx], padded, 0)
        n = len(idx)
        if n < batch_size:  # pad the batch too, so each bucket compiles once
            fill = ((0, batch_size - n), (0, 0))
            b_ids, mask, b_types = (np.pad(a, fill) for a in (b_ids, mask, b_types))
        logits = rr._score(rr.params, b_ids, mask, b_types)
        out[idx] = np.asarray(logits)[:n]
    return out


def rerank_run(
    rr: Reranker,
    run: Mapping[str, Mapping[str, float]],
    queries: Mapping[str, str],
    passages: Mapping[str, str],
    *,
    top_k: int = 100,
    batch_size: int = 32,
    progress: bool = True,
) -> Run:
    """Rescores each query's `top_k` docs with the cross-encoder; the rest keep their order below.

    `passages` maps doc id → the text the cross-encoder reads (title + ' ' + text for BEIR).
    """
    pairs, keys, tails = [], [], {}
    for qid, docs in run.items():
        if qid not in queries:
            raise InputError(f"run names query {qid!r}, which is not among the queries")
        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
        for did, _ in ranked[:top_k]:
            if did not in passages:
                raise InputError(f"run names doc {did!r} (query {qid!r}), not in the corpus")
            pairs.append((queries[qid], passages[did]))
            keys.append((qid, did))
        tails[qid] = [did for did, _ in ranked[top_k:]]
    scores = relevance(
        score_pairs(
            rr,
            [q for q, _ in pairs],
            [p for _, p in pairs],
            batch_size=batch_size,
            progress=progress,
        )
    )
    out: Run = {qid: {} for qid in run}
    for (qid, did), s in zip(keys, scores, strict=True):
        out[qid][did] = float(s)
    for qid, tail in tails.items():
        floor = min(out[qid].values(), default=0.0)
        for rank, did in enumerate(tail, start=1):
            out[qid][did] = floor - rank  # below every reranked doc, original order kept
    return out
