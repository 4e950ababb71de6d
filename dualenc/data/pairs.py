"""Sentence-pair classification files: TSV, CSV or JSONL with named columns.

Known layouts are found by their header: MRPC (`#1 String`, `#2 String`, `Quality`; the original
files are UTF-8 with a BOM and unquoted tabs), QQP (`question1`, `question2`, `is_duplicate`), NLI
(`premise`, `hypothesis`, `label`) and GLUE-style `sentence1`/`sentence2`/`label`. The STS benchmark
release files (`sts-train.csv`, `sts-dev.csv`, `sts-test.csv`: tab-separated, no header, the 0-5
score in column 5, the sentences in 6 and 7) are read as `sentence1`/`sentence2`/`score`. Any
other layout names its columns. Bad rows raise `InputError` naming file:line:field.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from dualenc.io import InputError, read_jsonl

# (text_a, text_b, label) column names, tried in order.
LAYOUTS = (
    ("#1 String", "#2 String", "Quality"),  # MRPC
    ("question1", "question2", "is_duplicate"),  # QQP
    ("premise", "hypothesis", "label"),  # NLI (SNLI / MNLI)
    ("sentence1", "sentence2", "label"),  # GLUE RTE / WNLI / STS-style
    ("sentence1", "sentence2", "score"),  # graded pairs (STS benchmark)
)
STSB_FILES = ("sts-train.csv", "sts-dev.csv", "sts-test.csv")


@dataclasses.dataclass
class Pairs:
    """Pairs of one file, in file order; `lines` are 1-based file lines, for error messages."""

    path: str
    text_a: list[str]
    text_b: list[str]
    labels: list[str]  # raw label strings, mapped to class ids by `label_ids`
    lines: list[int]
    columns: tuple[str, str, str]

    def __len__(self) -> int:
        return len(self.text_a)


def _format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name in STSB_FILES:
        return "stsb"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    return "csv" if name.endswith(".csv") else "tsv"


def _open(path: Path) -> io.TextIOBase:
    """Text stream without a BOM (the MRPC release files start with one); `*.gz` gunzipped."""
    if not path.exists():
        raise InputError("file not found", path=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(line, {column: value}) per data row. TSV splits on tabs with no quoting (MRPC strings
    hold unbalanced `"`); CSV follows RFC 4180 quoting."""
    if fmt == "jsonl":
        yield from read_jsonl(path)
        return
    if fmt == "stsb":
        yield from _stsb_rows(path)
        return
    with _open(path) as f:
        if fmt == "csv":
            numbered = _csv_records(f)
        else:
            numbered = enumerate((line.rstrip("\r\n").split("\t") for line in f), start=1)
        header = None
        for lineno, row in numbered:
            if header is None:
                header = [c.strip() for c in row]
                continue
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise InputError(
                    f"expected {len(header)} columns (as the header), got {len(row)}",
                    path=path,
                    line=lineno,
                )
            yield lineno, dict(zip(header, row, strict=True))


def _stsb_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """The STS benchmark layout: genre, file, year, id, score, s1, s2 (some rows carry two more
    source columns); tabs, no header, no quoting."""
    with _open(path) as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.rstrip("\r\n").split("\t")
            if not any(c.strip() for c in cols):
                continue
            if len(cols) < 7:
                raise InputError(
                    f"expected >= 7 tab-separated columns (STS benchmark), got {len(cols)}",
                    path=path,
                    line=lineno,
                )
            yield lineno, {"sentence1": cols[5], "sentence2": cols[6], "score": cols[4]}


def _csv_records(f) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) per CSV record; a quoted field may span several lines."""
    reader, start = csv.reader(f), 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _pick_columns(
    keys: Sequence[str], overrides: Sequence[str | None], path: Path, *, header: bool
) -> tuple[str, str, str]:
    """The (text_a, text_b, label) columns: overrides first, else the known layout with most
    columns present. A header must hold all three; a JSONL row may lack one (reported per line)."""
    layouts = [tuple(o or d for o, d in zip(overrides, lay, strict=True)) for lay in LAYOUTS]
    cols = max(layouts, key=lambda cs: sum(c in keys for c in cs))  # first of the best
    missing = [c for c in cols if c not in keys]
    if missing and (header or len(missing) > 1):
        raise InputError(
            f"column not found; the file has {list(keys)}. Known layouts: "
            f"{[list(lay) for lay in LAYOUTS]}; name yours with --text_a/--text_b/--label",
            path=path,
            line=1,
            field=missing[0],
        )
    return cols


def read_pairs(
    path: str | os.PathLike,
    *,
    text_a: str | None = None,
    text_b: str | None = None,
    label: str | None = None,
) -> Pairs:
    """Reads a labelled pair file; column names default to the first known layout present."""
    path = Path(path)
    fmt = _format(path)
    out = Pairs(str(path), [], [], [], [], ("", "", ""))
    cols = None
    for lineno, row in _rows(path, fmt):
        if cols is None:
            cols = _pick_columns(list(row), (text_a, text_b, label), path, header=fmt != "jsonl")
        for c in cols:
            if c not in row or row[c] is None:
                raise InputError("missing field", path=path, line=lineno, field=c)
        a, b, y = (row[c] for c in cols)
        for c, v in zip(cols[:2], (a, b), strict=True):
            if not isinstance(v, str):
                raise InputError(
                    f"expected a string, got {type(v).__name__}", path=path, line=lineno, field=c
                )
        if isinstance(y, bool) or not isinstance(y, str | int):
            raise InputError(
                f"expected a label string or integer, got {y!r}",
                path=path,
                line=lineno,
                field=cols[2],
            )
        if not str(y).strip():
            raise InputError("empty label", path=path, line=lineno, field=cols[2])
        out.text_a.append(a)
        out.text_b.append(b)
        out.labels.append(str(y).strip())
        out.lines.append(lineno)
    if cols is None:
        raise InputError("no pairs: the file has no data rows", path=path)
    out.columns = cols
    return out


def label_ids(pairs: Pairs, names: Sequence[str]) -> np.ndarray:
    """Class ids (int32) of `pairs.labels`: an integer label is the id itself, a string is looked
    up in `names` (case-insensitive; e.g. a model's id2label). Unknown labels name file:line."""
    lookup: Mapping[str, int] = {str(n).lower(): i for i, n in enumerate(names)}
    out = np.empty(len(pairs), np.int32)
    for i, (raw, line) in enumerate(zip(pairs.labels, pairs.lines, strict=True)):
        key = raw.lower()
        if key in lookup:
            out[i] = lookup[key]
        elif key.lstrip("-").isdigit() and 0 <= int(key) < len(names):
            out[i] = int(key)
        else:
            raise InputError(
                f"label {raw!r} is outside the label set {list(names)} (ids 0..{len(names) - 1})",
                path=pairs.path,
                line=line,
                field=pairs.columns[2],
            )
    return out


def label_scores(pairs: Pairs, scale: float) -> np.ndarray:
    """Graded labels (float32) divided by `scale` into [0, 1] (an STS 0-5 score / 5): the
    targets of a 1-logit cross-encoder trained with BCE, as sentence-transformers does."""
    out = np.empty(len(pairs), np.float32)
    for i, (raw, line) in enumerate(zip(pairs.labels, pairs.lines, strict=True)):
        try:
            v = float(raw)
        except ValueError:
            v = float("nan")
        if not 0.0 <= v <= scale:  # NaN too
            raise InputError(
                f"label {raw!r} is not a number in [0, {scale:g}] (cross.label_scale)",
                path=pairs.path,
                line=line,
                field=pairs.columns[2],
            )
        out[i] = v / scale
    return out
