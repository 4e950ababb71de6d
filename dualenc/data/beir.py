"""BEIR-format readers: corpus.jsonl(.gz), queries.jsonl, qrels/<split>.tsv.

Qrels files are read with or without a header (some published files have none, and BEIR's own
loader then silently drops the first row), and qrels naming unknown ids are dropped with a warning
rather than crashing an evaluation halfway through. Documents with no title and no text exist in
public collections: evaluation, encoding and search read them with `allow_empty=True` (one warning
counts them); training readers keep the strict default, which names file:line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from dualenc.io import InputError, open_text, read_jsonl, require_str

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Doc:
    title: str
    text: str


@dataclasses.dataclass
class BeirDataset:
    corpus: dict[str, Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_doc_id(obj: dict, path, line: int, key: str = "_id") -> str:
    """The `_id` (or `key`) of a BEIR row (ints accepted), or InputError naming file:line."""
    if key not in obj:
        raise InputError("missing field", path=path, line=line, field=key)
    val = obj[key]
    if isinstance(val, int) and not isinstance(val, bool):
        val = str(val)
    if not isinstance(val, str) or not val.strip():
        raise InputError(
            f"expected a non-empty string id, got {val!r}", path=path, line=line, field=key
        )
    return val


def load_corpus(path: str | os.PathLike, *, allow_empty: bool = False) -> dict[str, Doc]:
    """{doc_id: Doc(title, text)} in file order; duplicate ids or an empty corpus raise.

    A document with no title and no text raises, unless `allow_empty` (then one warning).
    """
    corpus: dict[str, Doc] = {}
    first_line: dict[str, int] = {}
    empty = []
    for lineno, obj in read_jsonl(path):
        doc_id = read_doc_id(obj, path, lineno)
        if doc_id in corpus:
            raise InputError(
                f"duplicate doc id {doc_id!r} (also on line {first_line[doc_id]})",
                path=path,
                line=lineno,
                field="_id",
            )
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise InputError("expected a string", path=path, line=lineno, field="title")
        text = require_str(obj, "text", path=path, line=lineno, allow_empty=True)
        if not (title.strip() or text.strip()):
            if not allow_empty:
                raise InputError(
                    "empty document (no title and no text)", path=path, line=lineno, field="text"
                )
            empty.append(lineno)
        corpus[doc_id] = Doc(title, text)
        first_line[doc_id] = lineno
    if not corpus:
        raise InputError("empty corpus", path=path)
    if empty:
        log.warning(
            "%s: %d of %d documents are empty (no title and no text; first on line %d); they "
            "are kept and embed as [CLS] [SEP]",
            path,
            len(empty),
            len(corpus),
            empty[0],
        )
    return corpus


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """{query_id: text} in file order; duplicate ids or empty texts raise."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        qid = read_doc_id(obj, path, lineno)
        if qid in queries:
            raise InputError(
                f"duplicate query id {qid!r} (also on line {first_line[qid]})",
                path=path,
                line=lineno,
                field="_id",
            )
        queries[qid] = require_str(obj, "text", path=path, line=lineno)
        first_line[qid] = lineno
    if not queries:
        raise InputError("no queries", path=path)
    return queries


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """{query_id: {doc_id: score}} from TSV `qid docid score` (header optional; TREC 4-col ok)."""
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cols = line.rstrip("\n\r").split("\t")
            if len(cols) == 1:
                cols = line.split()
            if len(cols) == 4:  # TREC qrels: qid iter docid score
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                raise InputError(
                    f"expected 3 tab-separated columns, got {len(cols)}", path=path, line=lineno
                )
            qid, did, score = (c.strip() for c in cols)
            try:
                val = int(float(score))
            except ValueError:
                if lineno == 1:  # a header such as query-id corpus-id score
                    continue
                raise InputError(
                    f"score {score!r} is not a number", path=path, line=lineno, field="score"
                ) from None
            qrels.setdefault(qid, {})[did] = val
    if not qrels:
        raise InputError("no qrels", path=path)
    return qrels


def _find(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise InputError(f"missing file (looked for {', '.join(names)})", path=root)


def filter_qrels(
    qrels: dict[str, dict[str, int]], queries, corpus, *, source: str = "qrels"
) -> dict[str, dict[str, int]]:
    """Drops qrels naming unknown query/doc ids, logging a warning with the counts."""
    out: dict[str, dict[str, int]] = {}
    bad_q = bad_d = 0
    for qid, docs in qrels.items():
        if qid not in queries:
            bad_q += len(docs)
            continue
        kept = {d: s for d, s in docs.items() if d in corpus}
        bad_d += len(docs) - len(kept)
        if kept:
            out[qid] = kept
    if bad_q or bad_d:
        log.warning(
            "%s: dropped %d qrels naming unknown query ids and %d naming unknown doc ids",
            source,
            bad_q,
            bad_d,
        )
    return out


def qrels_path(root: str | os.PathLike, split: str) -> Path:
    """qrels/<split>.tsv, or qrels/<split>.with_header.tsv when only that exists."""
    return _find(Path(root) / "qrels", f"{split}.tsv", f"{split}.with_header.tsv")


def load_beir(
    root: str | os.PathLike, split: str = "test", *, allow_empty_docs: bool = False
) -> BeirDataset:
    """Loads root/corpus.jsonl[.gz], root/queries.jsonl[.gz] and root/qrels/<split>.tsv."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("BEIR dataset directory not found", path=root)
    corpus_path = _find(root, "corpus.jsonl", "corpus.jsonl.gz")
    corpus = load_corpus(corpus_path, allow_empty=allow_empty_docs)
    queries = load_queries(_find(root, "queries.jsonl", "queries.jsonl.gz"))
    qpath = qrels_path(root, split)
    qrels = filter_qrels(load_qrels(qpath), queries, corpus, source=str(qpath))
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)
