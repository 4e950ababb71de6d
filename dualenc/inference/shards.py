"""Corpus embeddings as shards: streamed, host-sharded encoding that resumes, read back mmapped.

Why: encoding a corpus in one call held every text's tokens at once (8.3 GB RSS for 200k MS MARCO
passages) and gave every host the full (N, D) matrix. Here the corpus is cut into fixed shards of
`shard_rows` rows numbered over the WHOLE corpus; host i of n takes the contiguous run of shards
[S*i//n, S*(i+1)//n) and encodes them one at a time over its LOCAL devices only: a shard's texts
are read (`CorpusSource.read`), tokenised and encoded, and its (rows, D) float32 array is written
tmp-then-rename as `emb-<tag>-<shard>.npy`. Nothing crosses hosts but barriers, and no host holds
more than one shard's texts and tokens.

Identity: a shard's batches depend only on its own texts, so the shards are the same whichever
host encodes them, and their concatenation is bit-identical to one host encoding everything
(with the same local device count). The tag is a digest of what made the vectors (the encoder
key: weights, tokenizer, config, pooling, max_length, code version; the corpus fingerprint; the
shard size), so shards of another model or corpus are never taken for ours.

Resume: a shard whose file exists with the right shape is complete (it was renamed into place
whole) and is skipped, so a killed encode restarts at its first missing shard, on any number of
hosts. Process 0 then writes `manifest.json` (ids file, dims, dtype, model and corpus
fingerprints, the shard list) and, when asked, `ids.jsonl` (one JSON string a line). Any `epath`
path works (`gs://` included); local shards are read back with np.load(mmap_mode='r').
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from dualenc import multihost
from dualenc.data.corpus_source import CorpusSource, doc_text
from dualenc.io import atomic_write, write_json

MANIFEST, IDS = "manifest.json", "ids.jsonl"
DEFAULT_SHARD_ROWS = 32768


def shard_ranges(count: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) rows of each shard of a `count`-row corpus."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be ≥ 1, got {shard_rows}")
    return [(lo, min(lo + shard_rows, count)) for lo in range(0, count, shard_rows)]


def host_shards(n_shards: int, host: int | None = None, hosts: int | None = None) -> range:
    """The contiguous shards host `host` of `hosts` owns (default: this process); the earlier
    hosts take the extra ones (one shard on two hosts: host 0 holds it)."""
    host = multihost.process_index() if host is None else host
    hosts = multihost.process_count() if hosts is None else hosts
    return range(-(-n_shards * host // hosts), -(-n_shards * (host + 1) // hosts))


def local_mesh() -> Mesh:
    """A 1-D mesh over this host's devices (a mesh even for one device: None would mean every
    device of every host to the encoders), so that shards never span hosts."""
    return Mesh(np.array(jax.local_devices()), ("data",))


def shard_tag(key: dict, count: int, shard_rows: int) -> str:
    """Digest naming a shard set: what made the vectors, the corpus and the cut."""
    blob = json.dumps({**key, "count": count, "shard_rows": shard_rows}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EmbeddingShards:
    """The shards of one encoding in `directory`; reading never needs the manifest, so a host
    with its own (unshared) directory reads its own shards."""

    def __init__(self, directory, key: dict, count: int, shard_rows: int, dim: int | None = None):
        self.dir = multihost.epath(directory)
        self.local = multihost.is_local(directory)
        self.key, self.count, self.shard_rows = key, int(count), int(shard_rows)
        self.ranges = shard_ranges(self.count, self.shard_rows)
        self.tag = shard_tag(key, self.count, self.shard_rows)
        self.dim = dim

    def path(self, j: int):
        return self.dir / f"emb-{self.tag}-{j:06d}.npy"

    def mine(self) -> range:
        """This host's shards."""
        return host_shards(len(self.ranges))

    def load(self, j: int) -> np.ndarray:
        """Shard j, memory-mapped when local (read whole from an object store)."""
        p = self.path(j)
        if self.local:
            arr = np.load(os.fspath(p), mmap_mode="r", allow_pickle=False)
        else:
            with p.open("rb") as f:
                arr = np.load(f, allow_pickle=False)
        lo, hi = self.ranges[j]
        if arr.ndim != 2 or arr.shape[0] != hi - lo or (self.dim and arr.shape[1] != self.dim):
            raise ValueError(f"{p}: shape {arr.shape}, expected ({hi - lo}, {self.dim or 'D'})")
        return arr

    def complete(self, j: int) -> bool:
        """True when shard j is on disk whole (a damaged one is deleted: it is re-encoded)."""
        p = self.path(j)
        if not p.exists():
            return False
        try:
            dim = int(self.load(j).shape[1])  # load() checks the rows (and dim once known)
            self.dim = self.dim or dim
            return True
        except (ValueError, OSError, EOFError) as e:
            logging.warning("re-encoding damaged shard %s (%s)", p, e)
            p.unlink(missing_ok=True)
            return False

    def local_arrays(self):
        """Yields (first row, array) of this host's shards, in row order."""
        for j in self.mine():
            yield self.ranges[j][0], self.load(j)

    def to_array(self) -> np.ndarray:
        """All shards concatenated in memory (needs them all visible: small corpora, ScaNN
        training, quantisation)."""
        return np.concatenate([np.asarray(self.load(j)) for j in range(len(self.ranges))])

    def rows(self, rows) -> np.ndarray:
        """(len(rows), D) float32 vectors of the given global rows, read from the (mapped)
        shards that hold them (any host's: needs them visible, e.g. a shared cache dir)."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), int(self.dim or 0)), np.float32)
        shard = rows // self.shard_rows
        for j in np.unique(shard):
            sel = shard == j
            out[sel] = self.load(int(j))[rows[sel] - self.ranges[int(j)][0]]
        return out

    def nbytes(self) -> int:
        return self.count * int(self.dim or 0) * 4


def encode_shards(
    encoder,
    source: CorpusSource,
    directory,
    key: dict,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    batch_size: int = 64,
    max_length: int | None = None,
    packing: bool | None = None,
    progress: bool = True,
    text_fn: Callable = doc_text,
    write_ids: bool = False,
) -> tuple[EmbeddingShards, bool]:
    """(the shards of `source` under `directory`, whether every shard already existed).

    Every process calls it; each encodes only its own missing shards. `key` describes the
    encoder (`corpus_cache.encoder_key`); the corpus fingerprint is added here."""
    from dualenc.inference.batching import progress_bar  # noqa: PLC0415 - avoids a cycle
    from dualenc.inference.encode import encode_texts  # noqa: PLC0415

    key = {**key, "corpus_fingerprint": source.fingerprint()}
    shards = EmbeddingShards(directory, key, len(source), shard_rows)
    mine = shards.mine()
    rows = (shards.ranges[mine[0]][0], shards.ranges[mine[-1]][1]) if mine else (0, 0)
    logging.info(
        "host %d encodes shards [%d, %d) of %d: rows [%d, %d) of %d",
        multihost.process_index(),
        mine.start,
        mine.stop,
        len(shards.ranges),
        *rows,
        shards.count,
    )
    todo = [j for j in mine if not shards.complete(j)]
    reused = not multihost.any_host(bool(todo))
    if todo and len(todo) < len(shards.mine()):
        logging.info(
            "resuming %s: %d of this host's %d shards are done",
            shards.dir,
            len(shards.mine()) - len(todo),
            len(shards.mine()),
        )
    mesh = local_mesh()
    bar = progress_bar(sum(shards.ranges[j][1] - shards.ranges[j][0] for j in todo), progress)
    for j in todo:
        lo, hi = shards.ranges[j]
        texts = [text_fn(d) for d in source.read(lo, hi)[1]]
        emb = encode_texts(
            encoder,
            texts,
            batch_size=batch_size,
            max_length=max_length,
            mesh=mesh,
            progress=False,
            packing=packing,
        )
        write_shard(shards.path(j), emb)
        shards.dim = int(emb.shape[1])
        bar.update(hi - lo)
    bar.close()
    multihost.wait_all("encode_shards:done")
    if shards.dim is None:  # a host with no shards of its own
        shards.dim = int(encoder.config.hidden_size)
    if multihost.is_main() and (not reused or not (shards.dir / MANIFEST).exists()):
        write_manifest(shards, source, write_ids)
    multihost.wait_all("encode_shards:manifest")
    return shards, reused


def write_shard(path, emb: np.ndarray) -> None:
    """One shard, tmp-then-rename (never half a file under the final name)."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.ascontiguousarray(emb, np.float32))


def write_manifest(shards: EmbeddingShards, source: CorpusSource, write_ids: bool) -> None:
    """manifest.json (+ ids.jsonl) of a finished encoding; process 0 only."""
    if write_ids:
        with atomic_write(shards.dir / IDS) as f:
            for lo, hi in shards.ranges:
                for d in source.read(lo, hi)[0]:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
    write_json(
        shards.dir / MANIFEST,
        {
            "count": shards.count,
            "dim": shards.dim,
            "dtype": "float32",
            "shard_rows": shards.shard_rows,
            "ids": IDS if write_ids else None,
            "model_fingerprint": hashlib.sha256(
                json.dumps(
                    {k: v for k, v in shards.key.items() if k != "corpus_fingerprint"},
                    sort_keys=True,
                ).encode()
            ).hexdigest()[:20],
            "corpus_fingerprint": shards.key["corpus_fingerprint"],
            "key": shards.key,
            "shards": [
                {"file": shards.path(j).name, "start": lo, "stop": hi}
                for j, (lo, hi) in enumerate(shards.ranges)
            ],
        },
    )


def read_manifest(directory) -> dict:
    """The manifest.json of a shard directory."""
    return json.loads((multihost.epath(directory) / MANIFEST).read_text())


def open_shards(directory) -> EmbeddingShards:
    """The EmbeddingShards a finished encoding left in `directory` (from its manifest)."""
    m = read_manifest(directory)
    return EmbeddingShards(directory, m["key"], m["count"], m["shard_rows"], m["dim"])


def read_shard_ids(directory) -> list[str]:
    """The ids.jsonl of a shard directory, in row order."""
    text = (multihost.epath(directory) / IDS).read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def concatenate_to_npy(shards: EmbeddingShards, output) -> None:
    """Streams all shards into one (N, D) float32 .npy at `output`, atomically, never holding
    more than one shard (the `dualenc.encode --output` file)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (shards.count, shards.dim)}
    with atomic_write(output, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for j in range(len(shards.ranges)):
            f.write(np.ascontiguousarray(shards.load(j), "<f4").tobytes())
