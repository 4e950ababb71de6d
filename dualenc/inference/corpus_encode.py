"""A corpus file or source into embedding shards: the streamed path of `dualenc.encode`,
`dualenc.evaluate` and `dualenc.mine`.

Why its own module: it ties together the encoder (`inference.encode`), the shard layout and
resume logic (`inference.shards`) and the cache's keys (`inference.corpus_cache`); kept in any one
of them, those three modules imported each other.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from absl import logging

from dualenc import multihost
from dualenc.data.corpus_source import open_corpus
from dualenc.inference import corpus_cache, shards
from dualenc.io import InputError
from dualenc.models.loading import load_towers


def cached_shards(
    encoder, source, *, cache_dir: str | os.PathLike | None, max_length: int, **kwargs
):
    """(EmbeddingShards of `source`, reused?): the streamed corpus cache. Shards live in
    cache_dir/shards-<digest of encoder and corpus> (a dir all hosts share lets them reuse each
    other's shards; each host reads only its own), memory-mapped on reads; a killed encode
    resumes there. `cache_dir=None`: a throwaway dir of this process, removed at exit."""
    key = corpus_cache.encoder_key(encoder, max_length)
    if cache_dir is None:
        d = Path(tempfile.mkdtemp(prefix="dualenc_shards_"))
        atexit.register(shutil.rmtree, d, True)
    else:
        digest = hashlib.sha256(
            json.dumps({**key, "corpus": source.fingerprint()}, sort_keys=True).encode()
        ).hexdigest()[:20]
        d = multihost.epath(cache_dir) / f"shards-{digest}"
    out, reused = shards.encode_shards(encoder, source, d, key, max_length=max_length, **kwargs)
    if reused:
        logging.info("reusing cached corpus embedding shards %s (%d x %d)", d, out.count, out.dim)
    return out, reused


def encode_file(
    model: str,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    tower: str = "passage",
    packing: bool | None = None,
    output_dir: str | os.PathLike | None = None,
    shard_rows: int = 0,
    cache_dir: str | os.PathLike | None = None,
):
    """Streams a JSONL / TSV corpus through `model` into embedding shards
    (`inference.shards`): each host encodes its own shards over its local devices, resuming
    after a kill. The shards go to `output_dir` (with manifest.json and ids.jsonl), else to the
    corpus cache (`cache_dir`; None: a throwaway dir). With `output_path`, process 0 then
    concatenates them into one (N, D) float32 .npy, written atomically, shard by shard.

    Returns the .npy memory-mapped (local paths), else the EmbeddingShards. `tower` picks the
    query or passage tower of a separate-tower export; `packing` as in `encode_texts`.
    """
    source = open_corpus(input_path, require_ids=False)  # bad input fails before the model load
    q_enc, p_enc = load_towers(model, dtype=dtype)
    encoder = q_enc if tower == "query" else p_enc
    max_length = int(max_length or encoder.max_length)
    kw = dict(
        shard_rows=shard_rows or shards.DEFAULT_SHARD_ROWS,
        batch_size=batch_size,
        packing=packing,
        progress=progress,
    )
    if output_dir:
        key = corpus_cache.encoder_key(encoder, max_length)
        out, _ = shards.encode_shards(
            encoder, source, output_dir, key, max_length=max_length, write_ids=True, **kw
        )
    else:
        out, _ = cached_shards(encoder, source, cache_dir=cache_dir, max_length=max_length, **kw)
    if not output_path:
        return out
    if multihost.is_main():
        missing = [j for j in range(len(out.ranges)) if not out.path(j).exists()]
        if missing:
            raise InputError(
                f"shard {missing[0]} of another host is not visible here: give all hosts one "
                "shared --output_dir or --cache_dir",
                path=out.dir,
            )
        shards.concatenate_to_npy(out, output_path)
    multihost.wait_all("encode_file:written")
    if multihost.is_local(output_path) and os.path.exists(output_path):
        return np.load(output_path, mmap_mode="r")
    return out
