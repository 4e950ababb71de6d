"""Corpora with random access by row, so that hosts read disjoint ranges and nothing holds a
whole corpus in memory (issue 25: MS MARCO's 8.8M passages as a dict took ~760 B a passage).

`open_corpus(path)` returns a `CorpusSource`:
- a TFDS dataset directory -> `dualenc.data.tfds_corpus.open_if_tfds` (array_record, random access);
- a BEIR `corpus.jsonl` / JSONL file (`_id`, `text`, optional `title`) -> `JsonlCorpus`;
- a `.tsv` file (`id<TAB>text` or `id<TAB>title<TAB>text`, optional header) -> `TsvCorpus`;
- a BEIR directory -> its corpus.jsonl(.gz).

Opening makes ONE streaming pass that validates every row (ids, fields, duplicates: errors name
file:line and field) and keeps only the byte offset of each row (a numpy int64 array, 8 B a
passage) and a sha256 of the bytes (the fingerprint). Duplicates are found on 64-bit id hashes
(8 B a passage, sorted), never on a set of ids. `read(start, stop)` seeks to row `start`.

Gzipped files cannot seek: a `.gz` corpus is streamed sequentially instead of being decompressed
to a cache (which would need a disk the size of the corpus). Offsets then count decompressed
bytes; a read that continues where the previous one stopped (the encoder's chunks, a host's own
range) continues the open stream; any other read reopens the file and skips forward. For fast
random reads of a big gzipped corpus, gunzip it once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from dualenc.data.beir import Doc, read_doc_id
from dualenc.io import InputError, check_json_strings, decode_line, require_str

log = logging.getLogger(__name__)
ID_HEADERS = ("id", "_id", "docid", "doc_id", "pid", "corpus-id")


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


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


class _LineCorpus:
    """Shared machinery: one validating pass recording row offsets, then seek-and-read."""

    kind = "lines"

    def __init__(self, path: str | os.PathLike, *, allow_empty: bool = True):
        self.path = Path(path)
        self.allow_empty = allow_empty
        self.gz = self.path.name.endswith(".gz")
        self._stream = None  # (file, next row) of the last sequential read
        self._index()

    # -- subclasses: parse one decoded line -> (id, Doc) or None to skip (header / blank)
    def parse(self, line: str, lineno: int, row: int) -> tuple[str, Doc] | None:
        raise NotImplementedError

    def _open(self):
        return gzip.open(self.path, "rb") if self.gz else open(self.path, "rb")  # noqa: SIM115

    def _index(self) -> None:
        # 8 B a row each (a list of Python ints would take ~36 B a row: 1 GB at 8.8M rows)
        offsets, lines, hashes, empty = array("q"), array("q"), array("Q"), []
        sha = hashlib.sha256()
        pos = 0
        with self._open() as f:
            for lineno, raw in enumerate(f, start=1):
                sha.update(raw)
                parsed = self.parse(decode_line(raw, self.path, lineno), lineno, len(offsets))
                if parsed is not None:
                    doc_id, doc = parsed
                    offsets.append(pos)
                    lines.append(lineno)
                    hashes.append(_id_hash(doc_id))
                    if not (doc.title.strip() or doc.text.strip()):
                        if not self.allow_empty:
                            raise InputError(
                                "empty document (no title and no text)",
                                path=self.path,
                                line=lineno,
                                field="text",
                            )
                        empty.append(lineno)
                pos += len(raw)
        if not offsets:
            raise InputError("empty corpus", path=self.path)
        self.offsets = np.frombuffer(offsets, np.int64).copy()
        self._fingerprint = f"{self.kind}:{sha.hexdigest()}"
        self._check_duplicates(np.frombuffer(hashes, np.uint64), np.frombuffer(lines, np.int64))
        if empty:
            log.warning(
                "%s: %d of %d documents are empty (no title and no text; first on line %d); "
                "they are kept and embed as [CLS] [SEP]",
                self.path,
                len(empty),
                len(offsets),
                empty[0],
            )

    def _check_duplicates(self, hashes: np.ndarray, lines: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
        for j in same:  # equal 64-bit hashes: compare the ids themselves (collisions are rare)
            a, b = sorted((int(order[j]), int(order[j + 1])))
            id_a, id_b = self.read(a, a + 1)[0][0], self.read(b, b + 1)[0][0]
            if id_a == id_b:
                raise InputError(
                    f"duplicate doc id {id_b!r} (also on line {lines[a]})",
                    path=self.path,
                    line=int(lines[b]),
                    field="_id",
                )

    def __len__(self) -> int:
        return len(self.offsets)

    def fingerprint(self) -> str:
        return self._fingerprint

    def _seek(self, start: int):
        """An open binary file positioned at row `start`: the open stream when it stopped
        there, or moved forward in it (gzip: decompresses the gap, never from the start again),
        else a reopened file."""
        if self._stream is not None:
            f, row = self._stream
            if row == start:
                return f
            if self.offsets[start] >= f.tell():
                f.seek(int(self.offsets[start]))
                self._stream = (f, start)
                return f
            f.close()
        f = self._open()
        f.seek(int(self.offsets[start]))  # gzip: decompresses and skips (sequential reads only)
        self._stream = (f, start)
        return f

    def read(self, start: int, stop: int) -> tuple[list[str], list[Doc]]:
        start, stop = max(0, start), min(stop, len(self))
        ids: list[str] = []
        docs: list[Doc] = []
        if start >= stop:
            return ids, docs
        f = self._seek(start)
        row = start
        while row < stop:
            pos = f.tell()
            raw = f.readline()
            if not raw:
                raise InputError(
                    f"file changed since it was opened (row {row} missing)", path=self.path
                )
            if pos != self.offsets[row]:
                continue  # a skipped line (blank / header)
            parsed = self.parse(raw.decode("utf-8"), 0, row)
            if parsed is None:  # pragma: no cover - indexed rows always parse
                continue
            ids.append(parsed[0])
            docs.append(parsed[1])
            row += 1
        self._stream = (f, stop)
        return ids, docs

    def __del__(self):
        if getattr(self, "_stream", None) is not None:
            self._stream[0].close()


class JsonlCorpus(_LineCorpus):
    """A BEIR corpus.jsonl(.gz): `_id`, `text`, optional `title`; blank lines skipped.

    `require_ids=False` (plain JSONL to encode): a missing `_id` becomes the row number."""

    kind = "jsonl"

    def __init__(self, path, *, allow_empty: bool = True, require_ids: bool = True):
        self.require_ids = require_ids
        super().__init__(path, allow_empty=allow_empty)

    def parse(self, line: str, lineno: int, row: int):
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"malformed JSON ({e.msg} at column {e.colno})", path=self.path, line=lineno
            ) from None
        if not isinstance(obj, dict):
            raise InputError(
                f"expected a JSON object, got {type(obj).__name__}", path=self.path, line=lineno
            )
        if lineno:  # the indexing pass validates; reads of indexed rows skip the checks
            check_json_strings(line, obj, self.path, lineno)
        if self.require_ids or "_id" in obj:
            doc_id = read_doc_id(obj, self.path, lineno)
        else:
            doc_id = str(row)
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise InputError(
                f"expected a string, got {type(title).__name__}",
                path=self.path,
                line=lineno,
                field="title",
            )
        text = require_str(obj, "text", path=self.path, line=lineno, allow_empty=True)
        return doc_id, Doc(title, text)


class TsvCorpus(_LineCorpus):
    """`id<TAB>text` or `id<TAB>title<TAB>text` rows (MS MARCO's collection.tsv); a first line
    whose id column is a header name (id, _id, docid, pid, ...) is skipped."""

    kind = "tsv"

    def parse(self, line: str, lineno: int, row: int):
        line = line.rstrip("\n\r")
        if not line.strip():
            return None
        cols = line.split("\t")
        if len(cols) not in (2, 3):
            raise InputError(
                f"expected 2 (id, text) or 3 (id, title, text) tab-separated columns, got "
                f"{len(cols)}",
                path=self.path,
                line=lineno,
            )
        if lineno == 1 and cols[0].strip().lower() in ID_HEADERS:
            return None
        doc_id = cols[0].strip()
        if not doc_id:
            raise InputError("empty id", path=self.path, line=lineno, field="id")
        title, text = (cols[1], cols[2]) if len(cols) == 3 else ("", cols[1])
        return doc_id, Doc(title, text)


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
