"""sentence-transformers style training data (JSONL / TSV) and BEIR qrels → `TrainExample`s.

Accepted JSONL lines: {"query"|"anchor", "positive", "negative"?, "negative_1"...} (a value may be
a string or a list of strings), or a JSON list [query, positive, negative...]. TSV lines:
query \t positive [\t negative ...]. Errors name file:line:field.

Teacher scores (for distillation losses): a dict line may carry "scores" (or "label" as a list),
one number per candidate in order: its positives, then its negatives (as a miner writes them);
either every line has them or none. Lines repeating a query text (anchor/positive pair files) are
grouped into one example holding all their positives (`examples.group_by_query`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dualenc.data.beir import BeirDataset
from dualenc.data.examples import TrainExample, group_by_query, passage_text, validate_example
from dualenc.io import InputError, json_line, open_text


def _texts(val, *, path, line: int, field: str) -> list[str]:
    vals = val if isinstance(val, list) else [val]
    for v in vals:
        if not isinstance(v, str):
            raise InputError(
                f"expected a string, got {type(v).__name__}", path=path, line=line, field=field
            )
    return list(vals)


def _from_dict(obj: dict, *, qid: str, path, line: int) -> TrainExample:
    qkey = "query" if "query" in obj else "anchor"
    if qkey not in obj:
        raise InputError("missing field (or 'anchor')", path=path, line=line, field="query")
    if "positive" not in obj:
        raise InputError("query has no positive passage", path=path, line=line, field="positive")
    query = _texts(obj[qkey], path=path, line=line, field=qkey)
    if len(query) != 1:
        raise InputError("expected one query string", path=path, line=line, field=qkey)
    positives = _texts(obj["positive"], path=path, line=line, field="positive")
    negatives: list[str] = []
    for key in sorted(k for k in obj if k.startswith("negative")):
        negatives += _texts(obj[key], path=path, line=line, field=key)
    qid = str(obj.get("qid", obj.get("id", qid)))
    ex = TrainExample(qid=qid, query=query[0], positives=positives, negatives=negatives)
    ex.scores = _scores(obj, ex, path=path, line=line)
    return ex


def _scores(obj: dict, ex: TrainExample, *, path, line: int) -> dict[str, float] | None:
    """{candidate text: teacher score} from a "scores" (or list "label") field, else None."""
    key = "scores" if "scores" in obj else "label"
    val = obj.get(key)
    if key == "label" and not isinstance(val, list):
        return None  # a scalar label (pair classification / a margin) is not per candidate
    if val is None:
        return None
    cands = [*ex.positives, *ex.negatives]
    ok = isinstance(val, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in val
    )
    if not ok or len(val) != len(cands):
        raise InputError(
            f"expected {len(cands)} finite numbers (positives, then negatives)",
            path=path,
            line=line,
            field=key,
        )
    out: dict[str, float] = {}
    for t, v in zip(cands, val, strict=True):
        out.setdefault(t, float(v))
    return out


def _from_list(obj: list, *, qid: str, path, line: int) -> TrainExample:
    texts = _texts(obj, path=path, line=line, field="[]")
    if len(texts) < 2:
        raise InputError(
            "expected [query, positive, negative...]; query has no positive",
            path=path,
            line=line,
            field="positive",
        )
    return TrainExample(qid=qid, query=texts[0], positives=[texts[1]], negatives=texts[2:])


def load_st_jsonl(path: str | os.PathLike) -> list[TrainExample]:
    """Reads sentence-transformers style JSONL (dict or list per line); groups repeated queries."""
    out, scored = [], None
    with open_text(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            obj = json_line(raw, path, lineno)
            qid = str(len(out))
            if isinstance(obj, dict):
                ex = _from_dict(obj, qid=qid, path=path, line=lineno)
            elif isinstance(obj, list):
                ex = _from_list(obj, qid=qid, path=path, line=lineno)
            else:
                raise InputError("expected a JSON object or list", path=path, line=lineno)
            if scored is not None and scored != (ex.scores is not None):
                raise InputError(
                    "teacher scores on some lines only", path=path, line=lineno, field="scores"
                )
            scored = ex.scores is not None
            out.append(validate_example(ex, path=path, line=lineno))
    if not out:
        raise InputError("no training examples", path=path)
    return group_by_query(out)


def load_st_tsv(path: str | os.PathLike) -> list[TrainExample]:
    """Reads query \\t positive [\\t negative ...] lines (no header); groups repeated queries."""
    out = []
    with open_text(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            cols = raw.rstrip("\n\r").split("\t")
            if len(cols) < 2:
                raise InputError(
                    "expected query<TAB>positive[<TAB>negative...]",
                    path=path,
                    line=lineno,
                    field="positive",
                )
            ex = TrainExample(
                qid=str(len(out)), query=cols[0], positives=[cols[1]], negatives=cols[2:]
            )
            out.append(validate_example(ex, path=path, line=lineno))
    if not out:
        raise InputError("no training examples", path=path)
    return group_by_query(out)


def load_st(path: str | os.PathLike) -> list[TrainExample]:
    """Dispatches on the extension: .tsv(.gz) → TSV, anything else → JSONL."""
    name = Path(path).name.removesuffix(".gz")
    return load_st_tsv(path) if name.endswith(".tsv") else load_st_jsonl(path)


def examples_from_beir(
    ds: BeirDataset, negatives: dict[str, list[str]] | None = None, *, min_score: int = 1
) -> list[TrainExample]:
    """One example per judged query (qrels score ≥ min_score are positives); `negatives` maps
    qid → doc ids (e.g. mined with BM25); relevant docs are never used as negatives."""
    out = []
    for qid, judged in ds.qrels.items():
        if qid not in ds.queries:
            continue
        pos_ids = [d for d, s in judged.items() if s >= min_score and d in ds.corpus]
        if not pos_ids:
            continue
        neg_ids = [
            d
            for d in (negatives or {}).get(qid, [])
            if d in ds.corpus and judged.get(d, 0) < min_score
        ]
        out.append(
            TrainExample(
                qid=qid,
                query=ds.queries[qid],
                positives=[passage_text(ds.corpus[d].title, ds.corpus[d].text) for d in pos_ids],
                negatives=[passage_text(ds.corpus[d].title, ds.corpus[d].text) for d in neg_ids],
            )
        )
    if not out:
        raise InputError("no judged query with a positive document")
    return out
