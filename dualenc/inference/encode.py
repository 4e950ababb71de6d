"""Encodes texts into embeddings with a jitted, length-bucketed step (the library behind
`python -m dualenc.encode`; the one owner of text -> embedding for every caller).

`read_texts` reads a JSONL file (a `text` field and an optional `title`, prepended as in BEIR);
`encode_texts` returns float32 (N, D) embeddings in input order (a corpus file streams through it
shard by shard: `inference.corpus_encode.encode_file`). Empty texts are
kept (one warning counts them) and embed as `[CLS] [SEP]`, as in sentence-transformers. With
several processes, `encode_texts` shards every batch over all devices of all hosts and gathers
the embeddings to every host (queries, small in-memory corpora).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from dualenc import multihost
from dualenc.inference import packing as packing_lib
from dualenc.inference.batching import Placer, default_mesh, progress_bar, tokenize_for_encoding
from dualenc.io import InputError, read_jsonl, require_str
from dualenc.models import dual_encoder, target
from dualenc.tokenization import DEFAULT_BUCKETS, bucket_batches, pad_batch, pad_id

_STEPS: dict = {}


def doc_fields(doc) -> tuple[str, str]:
    """(title, text) of a BEIR dict or an object with .title/.text; missing ones are ''."""
    if isinstance(doc, dict):
        return doc.get("title") or "", doc.get("text") or ""
    return getattr(doc, "title", "") or "", getattr(doc, "text", "") or ""


def beir_doc_text(doc) -> str:
    """title + ' ' + text, stripped (a BEIR dict or an object with .title/.text)."""
    title, text = doc_fields(doc)
    return f"{title} {text}".strip()


def warn_empty(texts: Sequence[str], what: str, source="") -> int:
    """Logs ONE warning counting the empty texts (kept: they embed as `[CLS] [SEP]`)."""
    n = sum(1 for t in texts if not t.strip())
    if n:
        where = f"{source}: " if source else ""
        logging.warning(
            "%s%d of %d %s are empty; they are kept and embed as [CLS] [SEP] (BM25 never "
            "retrieves them)",
            where,
            n,
            len(texts),
            what,
        )
    return n


def read_texts(path: str | os.PathLike) -> list[str]:
    """Texts of a JSONL file (`text`, optional `title`); bad lines name file:line:field.

    Empty texts are valid input (public collections hold some): kept, counted in one warning.
    """
    texts = []
    for lineno, obj in read_jsonl(path):
        text = require_str(obj, "text", path=path, line=lineno, allow_empty=True)
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise InputError(
                f"expected a string, got {type(title).__name__}",
                path=path,
                line=lineno,
                field="title",
            )
        texts.append(beir_doc_text({"title": title, "text": text}))
    if not texts:
        raise InputError("no texts to encode: the file is empty", path=path)
    warn_empty(texts, "texts", path)
    return texts


def encode_step(spec):
    """The jitted (params, input_ids, attention_mask) -> (B, D) float32 step for `spec`.

    One step per spec, so jit compiles once per padded (rows, length) shape; params are an
    argument (not a constant), so re-wrapped trained params reuse the compiled programs.
    """
    try:
        return _STEPS[spec]
    except KeyError:
        pass
    from dualenc.models.dual_encoder import embed

    def step(params, input_ids, attention_mask):
        return embed(spec, params, input_ids, attention_mask).astype(jnp.float32)  # (B, D)

    _STEPS[spec] = fn = jax.jit(step)
    return fn


def encode_texts(
    encoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    packing: bool | None = None,
) -> np.ndarray:
    """(N, D) float32 embeddings of `texts`, in input order.

    `packing`: several texts per row (`inference.packing`; `batch_size` then counts rows), the
    same embeddings (≤ 1e-5) with far less padding on mixed-length texts: 1.28x sentence-
    transformers instead of 0.90x on MS MARCO passages + NQ questions (benchmarks/README.md).
    None (default): packed where the tower can pack (BERT / DistilBERT; DeBERTa's relative
    positions would cross segments) and packing saves ≥ `packing.MIN_SAVING` of the positions
    padding computes (`packing.worth_packing`; not on SciFact's long abstracts, which pad
    little); one log line says which.

    Texts are tokenised, sorted by length and padded to a few bucket lengths so that jit compiles
    a bounded number of shapes; batches are sharded over the devices when there are several
    (all devices of all hosts by default). Every process must call it with the same texts; all
    get the full result. An explicit `mesh` (a host's own devices: `inference.shards`) also
    decides the model's paths, as if only its devices existed, so a host encoding alone computes
    bit for bit what one process would.
    """
    context = nullcontext() if mesh is None else target.compiling_for(mesh)
    with context:  # an explicit mesh: paths (native kernels or XLA) chosen for THIS mesh
        return _encode_texts(
            encoder, texts, batch_size, max_length, mesh, progress, buckets, packing
        )


def _encode_texts(encoder, texts, batch_size, max_length, mesh, progress, buckets, packing):
    """`encode_texts` inside its target context (same arguments)."""
    seqs, max_length = tokenize_for_encoding(encoder, texts, batch_size, max_length)
    if not seqs:
        return np.zeros((0, encoder.config.hidden_size), np.float32)
    if packing is None and encoder.spec.arch in dual_encoder.PACKABLE_ARCHS:
        packing, padded, packed = packing_lib.worth_packing(seqs, batch_size, max_length, buckets)
        logging.info(
            "encoding %d texts %s: padding %.1f %% of positions packed, %.1f %% padded",
            len(seqs),
            "packed" if packing else "padded",
            100 * packed,
            100 * padded,
        )
    if packing:
        return packing_lib.encode_packed(
            encoder,
            texts,
            batch_size=batch_size,
            max_length=max_length,
            mesh=mesh,
            progress=progress,
            buckets=buckets,
            tokenized=(seqs, max_length),
        )
    batches = bucket_batches([len(s) for s in seqs], batch_size, buckets, max_length=max_length)
    step = encode_step(encoder.spec)
    placer = Placer(encoder.params, mesh if mesh is not None else default_mesh())
    pad = pad_id(encoder.tokenizer)
    out: np.ndarray | None = None
    pending = []  # dispatched but not yet fetched: overlaps host work with device compute
    bar = progress_bar(len(seqs), progress)
    for idx, padded_len in batches:
        rows = placer.rows(len(idx), batch_size)
        ids, mask = pad_batch([seqs[i] for i in idx], padded_len, pad)
        if rows > len(idx):  # filler rows: one attended [PAD] each, discarded below
            ids = np.concatenate([ids, np.full((rows - len(idx), padded_len), pad, np.int32)])
            mask = np.concatenate([mask, np.zeros((rows - len(idx), padded_len), np.int32)])
            mask[len(idx) :, 0] = 1
        pending.append((idx, step(*placer.put(ids, mask))))
        while len(pending) > 2:
            out = _fetch(pending.pop(0), out, len(seqs), bar)
    while pending:
        out = _fetch(pending.pop(0), out, len(seqs), bar)
    bar.close()
    return out


def _fetch(item, out: np.ndarray | None, n: int, bar) -> np.ndarray:
    idx, emb = item
    emb = multihost.to_host(emb)  # (rows, D), gathered across hosts when sharded over them
    if out is None:
        out = np.empty((n, emb.shape[-1]), np.float32)
    out[idx] = emb[: len(idx)]
    bar.update(len(idx))
    return out
