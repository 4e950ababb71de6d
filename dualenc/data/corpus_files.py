"""Streaming readers of corpus files: BEIR corpus.jsonl(.gz), plain JSONL and TSV, row by row.

Why: a corpus of millions of passages must never be held whole (`beir.load_corpus` builds a
dict). These generators yield (line, id, Doc) in file order and check every field as they go:
malformed JSON, bytes that are not UTF-8, lone surrogates (`"\\ud800"`, valid JSON that no UTF-8
writer can store), missing or empty ids and wrong types each raise `InputError` naming file:line
and field. Duplicate ids are left to the caller, which can check them in a few bytes per id.

Formats:
  beir   corpus.jsonl(.gz) (or the BEIR dir holding it): {"_id", "title"?, "text"}
  jsonl  {"_id" | "id", "title"?, "text" | "contents"} (Pyserini's {"id", "contents"} too)
  tsv    id <TAB> text [<TAB> title] (MS MARCO collection.tsv; DPR's psgs_w100.tsv with its
         `id text title` header), header line optional
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from dualenc.data.beir import Doc
from dualenc.io import InputError, read_jsonl, read_lines

CORPUS_FORMATS = ("beir", "jsonl", "tsv")
_TSV_HEADER_IDS = ("id", "_id", "docid", "doc_id", "pid")


def corpus_file(path: str | os.PathLike, format: str) -> Path:
    """The file to read: a BEIR dir resolves to its corpus.jsonl(.gz)."""
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


def _utf8(value: str, path, line: int, field: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"lone surrogate U+{ord(value[e.start]):04X} at character {e.start} "
            "(not encodable as UTF-8)",
            path=path,
            line=line,
            field=field,
        ) from None
    return value


def _id_of(obj: dict, keys: tuple[str, ...], path, line: int) -> str:
    key = next((k for k in keys if k in obj), None)
    if key is None:
        raise InputError("missing field", path=path, line=line, field=keys[0])
    val = obj[key]
    if isinstance(val, int) and not isinstance(val, bool):
        val = str(val)
    if not isinstance(val, str) or not val.strip():
        raise InputError(
            f"expected a non-empty string id, got {val!r}", path=path, line=line, field=key
        )
    return _utf8(val, path, line, key)


def _str_field(obj: dict, keys: tuple[str, ...], path, line: int, *, required: bool) -> str:
    key = next((k for k in keys if k in obj), None)
    if key is None:
        if required:
            raise InputError("missing field", path=path, line=line, field=keys[0])
        return ""
    val = obj[key]
    if val is None and not required:
        return ""
    if not isinstance(val, str):
        raise InputError(
            f"expected a string, got {type(val).__name__}", path=path, line=line, field=key
        )
    return _utf8(val, path, line, key)


def _iter_json(path: Path, format: str) -> Iterator[tuple[int, str, Doc]]:
    ids = ("_id",) if format == "beir" else ("_id", "id")
    texts = ("text",) if format == "beir" else ("text", "contents")
    for line, obj in read_jsonl(path):
        doc_id = _id_of(obj, ids, path, line)
        title = _str_field(obj, ("title",), path, line, required=False)
        yield line, doc_id, Doc(title, _str_field(obj, texts, path, line, required=True))


def _iter_tsv(path: Path) -> Iterator[tuple[int, str, Doc]]:
    for line, raw in read_lines(path):
        row = raw.rstrip("\r\n")
        if not row.strip():
            continue
        cols = row.split("\t")
        if line == 1 and cols[0].strip().lower() in _TSV_HEADER_IDS:
            continue  # a header such as `id text title`
        if len(cols) not in (2, 3):
            raise InputError(
                f"expected 2 or 3 tab-separated columns, got {len(cols)}", path=path, line=line
            )
        doc_id = cols[0].strip()
        if not doc_id:
            raise InputError("empty id", path=path, line=line, field="id")
        yield line, doc_id, Doc(cols[2] if len(cols) == 3 else "", cols[1])


def iter_corpus(path: str | os.PathLike, format: str) -> Iterator[tuple[int, str, Doc]]:
    """(line, id, Doc) of every document in file order, streamed; bad rows name file:line."""
    src = corpus_file(path, format)
    return _iter_tsv(src) if format == "tsv" else _iter_json(src, format)
