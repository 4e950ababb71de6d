"""Corpora as TFDS array_record datasets: built from BEIR / JSONL / TSV files in constant memory,
read back by random access over any range of rows, each host its own.

  build_corpus("scifact/corpus.jsonl.gz", "/data/scifact_tfds", format="beir", name="scifact")
  corpus = TfdsCorpus("/data/scifact_tfds")           # or tfds.data_source("scifact", ...)
  rows = host_range(len(corpus))                       # this host's contiguous share
  ids, docs = corpus.read(rows.start, rows.stop)

A corpus dataset has one split, 'corpus', with Text features id / title / text; record i is the
i-th document of the source file (TFDS shuffling is off), so the order every encoding, index and
run file uses is the file's. Its metadata holds the sha256 of the documents (ids, titles, texts),
which `fingerprint()` returns without reading a record: the same documents built from BEIR, JSONL
or TSV give the same fingerprint, and so hit the same caches. `TfdsCorpus` is the TFDS
implementation of `dualenc.data.corpus_source.CorpusSource`; `open_if_tfds(path)` is how
`corpus_source.open_corpus` recognises a TFDS corpus.
"""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tqdm import tqdm

from dualenc.data import tfds_io
from dualenc.data.beir import Doc
from dualenc.data.corpus_files import CORPUS_FORMATS, corpus_file, iter_corpus
from dualenc.io import InputError, atomic_dir
from dualenc.multihost import host_range

__all__ = ["CORPUS_FORMATS", "TfdsCorpus", "build_corpus", "host_range", "open_if_tfds"]

log = logging.getLogger(__name__)

SPLIT = "corpus"
KIND = "dualenc.corpus"


def features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text
    return tfds.features.FeaturesDict({"id": text(), "title": text(), "text": text()})


class _UniqueIds:
    """Duplicate-id check in 12 bytes per document: 8-byte id hashes and line numbers, sorted at
    the end; a repeated hash is confirmed by rereading the two lines' ids from the file."""

    def __init__(self):
        self.hashes, self.lines = array("Q"), array("Q")

    def add(self, doc_id: str, line: int) -> None:
        h = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
        self.hashes.append(int.from_bytes(h, "little"))
        self.lines.append(line)

    def check(self, src, format: str) -> None:
        h = np.frombuffer(self.hashes, np.uint64)
        order = np.argsort(h, kind="stable")
        same = np.flatnonzero(h[order][1:] == h[order][:-1])
        if not len(same):
            return
        lines = np.frombuffer(self.lines, np.uint64)
        pairs = sorted((int(lines[order[i + 1]]), int(lines[order[i]])) for i in same)
        wanted = {ln for pair in pairs for ln in pair}
        ids = {ln: i for ln, i, _ in iter_corpus(src, format) if ln in wanted}
        for later, first in pairs:
            if ids[later] == ids[first]:  # else a hash collision, not a duplicate
                raise InputError(
                    f"duplicate doc id {ids[later]!r} (also on line {first})",
                    path=corpus_file(src, format),
                    line=later,
                    field="_id" if format != "tsv" else "id",
                )


def _digest_update(digest, doc_id: str, doc: Doc) -> None:
    for s in (doc_id, doc.title, doc.text):
        b = s.encode("utf-8")
        digest.update(len(b).to_bytes(8, "little"))
        digest.update(b)


def build_corpus(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    format: str = "beir",
    name: str = "corpus",
    overwrite: bool = False,
    shard_bytes: int = tfds_io.SHARD_BYTES,
    progress: bool = False,
) -> Path | epath.Path:
    """Streams a BEIR / JSONL / TSV corpus into a TFDS dataset at out_dir/<name>/1.0.0 (out_dir is
    its TFDS data dir), built in a temp dir renamed into place; bad input names file:line."""
    out, name = epath.Path(out_dir), tfds_io.check_name(name)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to rebuild")
    feats, digest, ids, empty = features(), hashlib.sha256(), _UniqueIds(), 0
    with atomic_dir(out_dir) as tmp:  # local temp dir; copied then renamed for a gs:// URL
        vdir = tfds_io.version_dir(tmp, name)
        writer = tfds_io.SplitWriter(vdir, name, SPLIT, feats, shard_bytes)
        try:
            rows = tqdm(iter_corpus(src, format), "documents", disable=not progress, unit="")
            for line, doc_id, doc in rows:
                ids.add(doc_id, line)
                _digest_update(digest, doc_id, doc)
                writer.write({"id": doc_id, "title": doc.title, "text": doc.text})
                empty += not (doc.title.strip() or doc.text.strip())
        finally:
            writer.abort()
        if not ids.lines:
            raise InputError("empty corpus", path=corpus_file(src, format))
        ids.check(src, format)
        meta = {"kind": KIND, "num_docs": len(ids.lines), "num_empty": empty}
        meta["content_sha256"] = digest.hexdigest()
        tfds_io.write_info(
            vdir, name, feats, [writer.close()], metadata=meta,
            description=f"dualenc corpus ({format}): id, title, text; record i = document i",
        )  # fmt: skip
    if empty:
        log.warning("%s: %d of %d documents are empty (kept)", src, empty, len(ids.lines))
    return out if "://" in os.fspath(out_dir) else Path(out_dir)


class TfdsCorpus:
    """A TFDS corpus read by random access (nothing loaded up front): `read(start, stop)` gives
    the ids and Docs of rows [start, stop) (stop clipped to the end, as a slice)."""

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        dirs = tfds_io.find_datasets(path)
        if len(dirs) != 1:
            found = "none" if not dirs else ", ".join(str(d) for d in dirs)
            raise InputError(f"expected one TFDS dataset, found {found}", path=path)
        self.path = dirs[0]
        self.info, self.source = tfds_io.open_source(self.path, split, default=SPLIT)
        names = set(self.info.features.keys())
        if not {"id", "text"} <= names:
            raise InputError(f"not a corpus: features {sorted(names)} lack id / text", path=path)
        self.has_title = "title" in names
        self.fast = tfds_io.all_text(self.info.features)  # every row read: decode the protos here

    def __len__(self) -> int:
        return len(self.source)

    def _doc(self, row) -> tuple[str, Doc]:
        title = tfds_io.text(row["title"]) if self.has_title else ""
        return tfds_io.text(row["id"]), Doc(title, tfds_io.text(row["text"]))

    def __getitem__(self, i: int) -> tuple[str, Doc]:
        """(id, Doc) of row i: a random-access source for grain (`grain.MapDataset.source`)."""
        return self._doc(self.source[i])

    def read(self, start: int, stop: int) -> tuple[list[str], list[Doc]]:
        if start < 0 or stop < 0:
            raise ValueError(f"read({start}, {stop}): rows are counted from 0")
        keys = list(range(start, min(stop, len(self))))
        if self.fast and self.has_title:
            rows = tfds_io.text_rows(self.source, keys, ("id", "title", "text"))
            return [r[0] for r in rows], [Doc(r[1], r[2]) for r in rows]
        pairs = [self._doc(r) for r in (self.source.__getitems__(keys) if keys else [])]
        return [i for i, _ in pairs], [d for _, d in pairs]

    def fingerprint(self) -> str:
        """The documents' sha256 recorded at build time; for a TFDS dataset built elsewhere, the
        sha256 of its metadata files (names, shard lengths and sizes)."""
        meta = self.info.metadata or {}
        if "content_sha256" in meta:
            return f"sha256:{meta['content_sha256']}"
        h = hashlib.sha256()
        for f in sorted(self.path.glob("*.json")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        return f"tfds-info-sha256:{h.hexdigest()}"


def open_if_tfds(path: str | os.PathLike) -> TfdsCorpus | None:
    """The TFDS corpus at `path` (its version dir, or a data dir holding one dataset), or None
    when `path` holds no TFDS dataset (a corpus file, a BEIR dir): what `open_corpus` asks."""
    if not tfds_io.find_datasets(path):
        return None
    return TfdsCorpus(path)
