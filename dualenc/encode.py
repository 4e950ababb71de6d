"""Encodes texts into embeddings with a jitted, length-bucketed step.

Usage:
  python -m dualenc.encode --model DIR_OR_HUB_ID --input FILE.jsonl[.gz] --output OUT.npy

Each input line is a JSON object with a `text` field (and an optional `title`, prepended as in
BEIR). The output is a float32 (N, D) .npy array in input order, written atomically by process 0.
Empty texts are kept (one warning counts them) and embed as `[CLS] [SEP]`, as in
sentence-transformers. With several processes (`multihost.initialize`), every batch is sharded
over all devices of all hosts and the embeddings are gathered to every host.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dualenc import multihost
from dualenc.io import InputError, atomic_write, read_jsonl, require_str
from dualenc.models import dual_encoder
from dualenc.models.loading import load_towers
from dualenc.tokenization import DEFAULT_BUCKETS, bucket_batches, pad_batch, pad_id, tokenize

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


class _Placer:
    """Places params once per layout, and each batch sharded over `mesh` or on one device.

    With several processes every batch is sharded over the global mesh (each host holds the
    whole padded batch and contributes its devices' rows); params must then be host values.
    """

    def __init__(self, params, mesh: Mesh | None):
        self.params, self.mesh = params, mesh
        self.ndev = mesh.size if mesh is not None else 1
        self.multi = jax.process_count() > 1
        self._cache = {}

    def rows(self, n: int, batch_size: int) -> int:
        """Padded row count: a full batch, else the next power of two (bounded shapes)."""
        r = n if n >= batch_size else min(batch_size, 1 << max(n - 1, 0).bit_length())
        if self.ndev > 1 and (r >= self.ndev or self.multi):
            r = math.ceil(r / self.ndev) * self.ndev
        return r

    def put(self, ids: np.ndarray, mask: np.ndarray):
        sharded = self.ndev > 1 and ids.shape[0] % self.ndev == 0
        if sharded:
            batch = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names))
            rep = NamedSharding(self.mesh, PartitionSpec())
        else:
            batch = rep = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        if sharded not in self._cache:
            self._cache[sharded] = _put(self.params, rep)
        return self._cache[sharded], _put(ids, batch), _put(mask, batch)


def _put(tree, sharding):
    """device_put that also works for a sharding spanning other hosts' devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
        multihost.to_host(tree),
    )


def _default_mesh() -> Mesh | None:
    """A 1-D mesh over all devices of all processes (None for a single device)."""
    devs = jax.devices()
    return Mesh(np.array(devs), ("data",)) if len(devs) > 1 else None


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

    `packing`: several texts per row (`dualenc.packing`; `batch_size` then counts rows), the
    same embeddings (≤ 1e-5) with far less padding on mixed-length texts: 1.28x sentence-
    transformers instead of 0.90x on MS MARCO passages + NQ questions (benchmarks/README.md).
    None (default): packed where the tower can pack (BERT / DistilBERT; DeBERTa's relative
    positions would cross segments) and packing saves ≥ `packing.MIN_SAVING` of the positions
    padding computes (`packing.worth_packing`; not on SciFact's long abstracts, which pad
    little); one log line says which.

    Texts are tokenised, sorted by length and padded to a few bucket lengths so that jit compiles
    a bounded number of shapes; batches are sharded over the devices when there are several
    (all devices of all hosts by default). Every process must call it with the same texts; all
    get the full result.
    """
    from dualenc import packing as packing_lib  # imported here: it imports this module

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
    placer = _Placer(encoder.params, mesh if mesh is not None else _default_mesh())
    pad = pad_id(encoder.tokenizer)
    out: np.ndarray | None = None
    pending = []  # dispatched but not yet fetched: overlaps host work with device compute
    bar = _progress(len(seqs), progress)
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


def tokenize_for_encoding(
    encoder, texts: Sequence[str], batch_size: int, max_length: int | None
) -> tuple[list, int]:
    """(token ids per text, the length limit used): the checks and truncation shared by the
    padded and the packed encoding paths. The limit is the encoder's unless `max_length` is
    given, never past its position table."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    limit = int(getattr(encoder.config, "max_position_embeddings", 0) or 1 << 30)
    max_length = min(int(max_length or encoder.max_length), limit)
    texts = list(texts)
    return (tokenize(encoder.tokenizer, texts, max_length) if texts else []), max_length


def _fetch(item, out: np.ndarray | None, n: int, bar) -> np.ndarray:
    idx, emb = item
    emb = multihost.to_host(emb)  # (rows, D), gathered across hosts when sharded over them
    if out is None:
        out = np.empty((n, emb.shape[-1]), np.float32)
    out[idx] = emb[: len(idx)]
    bar.update(len(idx))
    return out


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="text",
        desc="encode",
        disable=not enabled or not multihost.is_main(),
        dynamic_ncols=True,
    )


def encode_file(
    model: str,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    tower: str = "passage",
    packing: bool | None = None,
) -> np.ndarray:
    """Reads a JSONL file, encodes it with `model`; process 0 saves the (N, D) array atomically.

    `tower` picks the query or passage tower of a separate-tower export (ignored otherwise);
    `packing` as in `encode_texts`.
    """
    texts = read_texts(input_path)  # fails before the (slow) model load on bad input
    q_enc, p_enc = load_towers(model, dtype=dtype)
    encoder = q_enc if tower == "query" else p_enc
    emb = encode_texts(
        encoder,
        texts,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        packing=packing,
    )
    if multihost.is_main():
        with atomic_write(output_path, "wb") as f:
            np.save(f, emb)
    multihost.barrier("encode_file:written")
    return emb


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "model",
        None,
        "Model: a Hugging Face or sentence-transformers dir, or a hub id.",
        required=True,
    )
    flags.DEFINE_string(
        "input",
        None,
        "JSONL(.gz) file, one object per line with a `text` field and an optional `title`.",
        required=True,
    )
    flags.DEFINE_string(
        "output",
        None,
        "Output .npy path: float32 (N, D) embeddings in input order, written atomically.",
        required=True,
    )
    flags.DEFINE_integer(
        "batch_size", 64, "Texts per jitted step (padded to a bucket length).", lower_bound=1
    )
    flags.DEFINE_integer(
        "max_length",
        None,
        "Truncate to this many tokens (default: the model's max_seq_length).",
        lower_bound=2,
    )
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
    flags.DEFINE_enum(
        "tower",
        "passage",
        ["query", "passage"],
        "Which tower of a separate-tower export (MODEL/query + MODEL/passage) encodes the texts.",
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool(
        "packing",
        True,
        "Pack several texts per row (BERT / DistilBERT; batch_size then counts rows); "
        "--nopacking pads each batch to a length bucket.",
    )


def main(argv) -> None:
    from absl import flags

    del argv
    fv = flags.FLAGS
    multihost.initialize()
    try:
        emb = encode_file(
            fv.model,
            fv.input,
            fv.output,
            batch_size=fv.batch_size,
            max_length=fv.max_length,
            dtype=fv.dtype,
            progress=fv.progress,
            tower=fv.tower,
            packing=None if fv.packing else False,
        )
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("wrote %s: %s float32", fv.output, emb.shape)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
