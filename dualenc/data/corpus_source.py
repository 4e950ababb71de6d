"""Corpora with random access by row, so that hosts read disjoint ranges and nothing holds a
whole corpus in memory (issue 25: MS MARCO's 8.8M passages as a dict took ~760 B a passage).

`open_corpus(path)` returns a `CorpusSource`:
- a TFDS dataset directory -> `dualenc.data.tfds_corpus.open_if_tfds` (array_record, random access);
- a BEIR `corpus.jsonl` / JSONL file (`_id`, `text`, optional `title`) -> `JsonlCorpus`;
- a `.tsv` file (`id<TAB>text` or `id<TAB>text<TAB>title`, optional header) -> `TsvCorpus`;
- a BEIR directory -> its corpus.jsonl(.gz).

The line readers live in `data.corpus_files`. Opening makes ONE streaming pass that validates
every row (ids, fields, duplicates: errors name file:line and field) and keeps only the byte
offset of each row (a numpy int64 array, 8 B a passage) and a sha256 of the bytes (the
fingerprint). Duplicates are found on 64-bit id hashes (8 B a passage, sorted), never on a set
of ids. `read(start, stop)` seeks to row `start`.

Gzipped files cannot seek: a `.gz` corpus is streamed sequentially instead of being decompressed
to a cache (which would need a disk the size of the corpus). Offsets then count decompressed
bytes; a read that continues where the previous one stopped (the encoder's chunks, a host's own
range) continues the open stream; any other read reopens the file and skips forward. For fast
random reads of a big gzipped corpus, gunzip it once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from dualenc.data.beir import Doc, read_doc_id
from dualenc.data.corpus_files import JsonlCorpus, TsvCorpus
from dualenc.io import InputError

log = logging.getLogger(__name__)


class CorpusSource(Protocol):
    """A corpus with random access by row, so hosts can read disjoint ranges and nothing holds
    it all."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> tuple[list[str], list[Doc]]:
        """(ids, Doc(title, text)) of rows [start, stop)."""
        ...

    def fingerprint(self) -> str:
        """Cheap, stable content identity (for caches and shard manifests)."""
        ...


def open_corpus(
    path: str | os.PathLike, *, allow_empty: bool = True, require_ids: bool = True
) -> CorpusSource:
    """The CorpusSource of a TFDS dataset dir, a BEIR dir, a JSONL(.gz) or a TSV(.gz) file.

    `allow_empty`: documents with no title and no text are kept (one warning counts them), as in
    evaluation; False raises naming file:line (training readers). `require_ids=False`: JSONL rows
    without `_id` get their row number (the texts `dualenc.encode` reads)."""
    p = Path(path)
    if p.is_dir():
        tfds = _open_tfds(p)
        if tfds is not None:
            return tfds
        for name in ("corpus.jsonl", "corpus.jsonl.gz", "corpus.tsv", "corpus.tsv.gz"):
            if (p / name).exists():
                return open_corpus(p / name, allow_empty=allow_empty, require_ids=require_ids)
        raise InputError("no corpus.jsonl[.gz] / corpus.tsv or TFDS dataset here", path=p)
    if not p.exists():
        raise InputError("file not found", path=p)
    name = p.name[: -len(".gz")] if p.name.endswith(".gz") else p.name
    if name.endswith(".tsv"):
        return TsvCorpus(p, allow_empty=allow_empty)
    return JsonlCorpus(p, allow_empty=allow_empty, require_ids=require_ids)


def _open_tfds(path: Path):
    """`tfds_corpus.open_if_tfds(path)` when that module is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("dualenc.data.tfds_corpus") is None:
        return None
    from dualenc.data import tfds_corpus  # noqa: PLC0415 - lazy: TFDS is optional

    return tfds_corpus.open_if_tfds(path)


def doc_text(doc: Doc) -> str:
    """'title text', stripped (what a passage tower encodes, as in BEIR)."""
    return f"{doc.title} {doc.text}".strip()


def iter_rows(source: CorpusSource, chunk: int = 65536, start: int = 0, stop: int | None = None):
    """Yields (row, id, Doc) of rows [start, stop) reading `chunk` rows at a time."""
    stop = len(source) if stop is None else stop
    for lo in range(start, stop, chunk):
        ids, docs = source.read(lo, min(lo + chunk, stop))
        yield from zip(range(lo, lo + len(ids)), ids, docs, strict=True)


def read_ids(source: CorpusSource, chunk: int = 65536) -> list[str]:
    """All ids in row order (the one per-row Python object a search needs: rows -> ids)."""
    out: list[str] = []
    for lo in range(0, len(source), chunk):
        out.extend(source.read(lo, min(lo + chunk, len(source)))[0])
    return out


class ListCorpus:
    """An in-memory corpus (chunked documents, tests, small corpora) behind the same interface."""

    def __init__(self, ids: Sequence[str], docs: Sequence[Doc]):
        if len(ids) != len(docs):
            raise ValueError(f"{len(ids)} ids for {len(docs)} docs")
        self.ids, self.docs, self._fp = list(ids), list(docs), None

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, stop: int) -> tuple[list[str], list[Doc]]:
        return self.ids[start:stop], self.docs[start:stop]

    def fingerprint(self) -> str:
        if self._fp is None:  # length-prefixed, so that no two corpora collide by joining
            h = hashlib.sha256(b"list-corpus")
            for i, d in zip(self.ids, self.docs, strict=True):
                for s in (i, d.title, d.text):
                    b = s.encode("utf-8")
                    h.update(len(b).to_bytes(8, "little"))
                    h.update(b)
            self._fp = h.hexdigest()
        return self._fp


def from_texts(texts: Sequence[str], ids: Sequence[str] | None = None) -> ListCorpus:
    """A ListCorpus of plain texts (ids: the row numbers unless given)."""
    ids = [str(i) for i in range(len(texts))] if ids is None else ids
    return ListCorpus(ids, [Doc("", t) for t in texts])


def texts_of(source: CorpusSource, start: int, stop: int, text_fn: Callable = doc_text):
    """('title text' strings) of rows [start, stop)."""
    return [text_fn(d) for d in source.read(start, stop)[1]]


__all__ = [
    "CorpusSource",
    "Iterator",
    "JsonlCorpus",
    "ListCorpus",
    "TsvCorpus",
    "doc_text",
    "from_texts",
    "iter_rows",
    "open_corpus",
    "read_doc_id",
    "read_ids",
    "texts_of",
]
