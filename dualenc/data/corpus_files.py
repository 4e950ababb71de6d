"""Corpus files read in place: BEIR / JSONL and TSV readers that index rows by byte offset
(random access for `corpus_source.open_corpus`), or stream them once (`iter_corpus`, what
`dualenc.build_tfds` reads), with one parser per format so both paths accept and reject the
same rows (a 3-column TSV once read title and text swapped between the two).

Formats:
  beir / jsonl  {"_id", "title"?, "text"}; Pyserini's {"id", "contents"} where those are absent
  tsv           id <TAB> text [<TAB> title] (MS MARCO collection.tsv; DPR's psgs_w100.tsv with its
                `id text title` header), header line optional; a header `id title text` swaps
                the last two columns

Every row is checked as it is read: malformed JSON, bytes that are not UTF-8, lone surrogates,
missing or empty ids and wrong types raise `InputError` naming file:line and field.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dualenc.data.beir import Doc, read_doc_id
from dualenc.io import InputError, decode_line, json_object, require_str

log = logging.getLogger(__name__)
ID_HEADERS = ("id", "_id", "docid", "doc_id", "pid", "corpus-id")


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


class _LineCorpus:
    """Shared machinery: one validating pass recording row offsets, then seek-and-read."""

    kind = "lines"

    def __init__(self, path: str | os.PathLike, *, allow_empty: bool = True, index: bool = True):
        self.path = Path(path)
        self.allow_empty = allow_empty
        self.gz = self.path.name.endswith(".gz")
        self._stream = None  # (file, next row) of the last sequential read
        if index:  # index=False: only `scan` (one streaming pass, e.g. to build a TFDS dataset)
            self._index()

    # -- subclasses: parse one decoded line -> (id, Doc) or None to skip (header / blank)
    def parse(self, line: str, lineno: int, row: int) -> tuple[str, Doc] | None:
        raise NotImplementedError

    def _open(self):
        return gzip.open(self.path, "rb") if self.gz else open(self.path, "rb")  # noqa: SIM115

    def scan(self, sha=None) -> Iterator[tuple[int, int, str, Doc]]:
        """One validating pass in file order: (line, byte offset, id, Doc) of every document;
        a malformed row raises InputError naming file:line (and field). `sha` (a hashlib
        object) is fed every byte read."""
        pos = row = 0
        with self._open() as f:
            for lineno, raw in enumerate(f, start=1):
                if sha is not None:
                    sha.update(raw)
                parsed = self.parse(decode_line(raw, self.path, lineno), lineno, row)
                if parsed is not None:
                    yield lineno, pos, parsed[0], parsed[1]
                    row += 1
                pos += len(raw)

    def _index(self) -> None:
        # 8 B a row each (a list of Python ints would take ~36 B a row: 1 GB at 8.8M rows)
        offsets, lines, hashes, empty = array("q"), array("q"), array("Q"), []
        sha = hashlib.sha256()
        for lineno, pos, doc_id, doc in self.scan(sha):
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
    """A BEIR corpus.jsonl(.gz): `_id`, `text`, optional `title`; blank lines skipped. Pyserini's
    `id` / `contents` are read where `_id` / `text` are absent.

    `require_ids=False` (plain JSONL to encode): a missing id becomes the row number."""

    kind = "jsonl"

    def __init__(self, path, *, allow_empty: bool = True, require_ids: bool = True, index=True):
        self.require_ids = require_ids
        super().__init__(path, allow_empty=allow_empty, index=index)

    def parse(self, line: str, lineno: int, row: int):
        if not line.strip():
            return None
        # the indexing pass (lineno > 0) validates; reads of indexed rows skip the string check
        obj = json_object(line, self.path, lineno, check_strings=bool(lineno))
        id_key = "id" if "_id" not in obj and "id" in obj else "_id"
        if self.require_ids or id_key in obj:
            doc_id = read_doc_id(obj, self.path, lineno, id_key)
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
        text_key = "contents" if "text" not in obj and "contents" in obj else "text"
        text = require_str(obj, text_key, path=self.path, line=lineno, allow_empty=True)
        return doc_id, Doc(title, text)


class TsvCorpus(_LineCorpus):
    """`id<TAB>text` (MS MARCO's collection.tsv) or `id<TAB>text<TAB>title` rows (DPR's
    psgs_w100.tsv); a first line whose id column is a header name (id, _id, docid, pid, ...) is
    skipped, and its column names decide where a third column's title is (`id title text`)."""

    kind = "tsv"

    def __init__(self, path, *, allow_empty: bool = True, index: bool = True):
        self.title_col = 2  # of 3 columns: DPR's `id text title` unless a header says otherwise
        super().__init__(path, allow_empty=allow_empty, index=index)

    def parse(self, line: str, lineno: int, row: int):
        line = line.rstrip("\n\r")
        if not line.strip():
            return None
        cols = line.split("\t")
        if len(cols) not in (2, 3):
            raise InputError(
                f"expected 2 or 3 tab-separated columns (id, text[, title]), got {len(cols)}",
                path=self.path,
                line=lineno,
            )
        if lineno == 1 and cols[0].strip().lower() in ID_HEADERS:
            if len(cols) == 3 and cols[1].strip().lower() == "title":
                self.title_col = 1
            return None
        doc_id = cols[0].strip()
        if not doc_id:
            raise InputError("empty id", path=self.path, line=lineno, field="id")
        if len(cols) == 2:
            return doc_id, Doc("", cols[1])
        return doc_id, Doc(cols[self.title_col], cols[3 - self.title_col])


CORPUS_FORMATS = ("beir", "jsonl", "tsv")  # what `dualenc.build_tfds` reads as a corpus


def corpus_file(path: str | os.PathLike, format: str) -> Path:
    """The file of a `format` corpus: a BEIR dir resolves to its corpus.jsonl(.gz)."""
    if format not in CORPUS_FORMATS:
        raise InputError(f"unknown corpus format {format!r}; expected one of {CORPUS_FORMATS}")
    path = Path(path)
    if format == "beir" and path.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (path / name).is_file():
                return path / name
        raise InputError("missing file (looked for corpus.jsonl, corpus.jsonl.gz)", path=path)
    if not path.is_file():
        raise InputError("corpus file not found", path=path)
    return path


def iter_corpus(path: str | os.PathLike, format: str) -> Iterator[tuple[int, str, Doc]]:
    """(line, id, Doc) of every document in file order, in one streaming pass with the readers'
    own checks (nothing held, no offsets kept); duplicate ids are left to the caller."""
    src = corpus_file(path, format)
    reader = TsvCorpus(src, index=False) if format == "tsv" else JsonlCorpus(src, index=False)
    return ((line, doc_id, doc) for line, _, doc_id, doc in reader.scan())
