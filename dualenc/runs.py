"""TREC run files: `qid Q0 docid rank score tag`, one line per retrieved doc, written atomically."""

from __future__ import annotations

import math
import os

from dualenc.io import InputError, atomic_write, open_text

Run = dict[str, dict[str, float]]  # qid -> {docid: score}; the one run type


def write_trec(path: str | os.PathLike, run: Run, tag: str = "dualenc") -> None:
    """Writes `run` ranked by descending score (ties keep the run's order); rank starts at 1."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be a non-empty word, got {tag!r}")
    with atomic_write(path) as f:
        for qid, docs in run.items():
            for field in (qid, *docs):
                if not field or any(c.isspace() for c in field):
                    raise ValueError(f"ids in a TREC run cannot be empty or hold spaces: {field!r}")
            ranked = sorted(docs.items(), key=lambda x: -x[1])
            for rank, (docid, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.8g} {tag}\n")


def read_trec(path: str | os.PathLike) -> Run:
    """Reads a TREC run; malformed lines and duplicate (qid, docid) pairs name file:line."""
    run: Run = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise InputError(
                    f"expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}",
                    path=path,
                    line=lineno,
                )
            qid, _, docid, rank, score, _ = parts
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise InputError(
                    f"bad rank {rank!r} or score {score!r}", path=path, line=lineno
                ) from None
            if not math.isfinite(value):
                raise InputError(f"non-finite score {score!r}", path=path, line=lineno)
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise InputError(
                    f"doc {docid!r} listed twice for query {qid!r}", path=path, line=lineno
                )
            docs[docid] = value
    return run
