"""`TrainExample`, the one record every training reader produces, and helpers they share.

Readers (DPR JSON, sentence-transformers JSONL/TSV, BEIR qrels) all reduce to the same shape so the
pipeline and the TFDS builders never need to know where an example came from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

from dualenc.io import InputError


@dataclasses.dataclass
class TrainExample:
    """One query with its positive and (hard) negative passage texts (title + ' ' + text).

    `scores` (optional) maps a candidate's text to a teacher score, for distillation losses.
    """

    qid: str
    query: str
    positives: list[str]
    negatives: list[str] = dataclasses.field(default_factory=list)
    answers: list[str] = dataclasses.field(default_factory=list)
    scores: dict[str, float] | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if d["scores"] is None:
            del d["scores"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainExample:
        return cls(
            qid=str(d["qid"]),
            query=d["query"],
            positives=list(d["positives"]),
            negatives=list(d.get("negatives", [])),
            answers=list(d.get("answers", [])),
            scores=dict(d["scores"]) if d.get("scores") is not None else None,
        )


def passage_text(title: str | None, text: str) -> str:
    """The text a passage is encoded as: title + ' ' + text, stripped (as BEIR / DPR do)."""
    return f"{title or ''} {text}".strip()


def validate_example(
    ex: TrainExample, *, path: str | os.PathLike | None = None, line: int | None = None
) -> TrainExample:
    """Raises InputError (naming path:line:field) unless the example is usable for training."""
    if not isinstance(ex.query, str) or not ex.query.strip():
        raise InputError("empty query text", path=path, line=line, field="query")
    if not ex.positives:
        raise InputError("query has no positive passage", path=path, line=line, field="positives")
    for field, texts in (("positives", ex.positives), ("negatives", ex.negatives)):
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(
                    f"empty passage text (item {i})", path=path, line=line, field=field
                )
    return ex


def _merge(into: list[str], more: Sequence[str]) -> None:
    seen = set(into)
    into.extend(t for t in more if not (t in seen or seen.add(t)))


def group_by_query(examples: Sequence[TrainExample]) -> list[TrainExample]:
    """Merges examples with the same query text into one (first qid, positives and negatives in
    first-seen order), so a query never appears twice and all its positives are known.

    Anchor/positive pair files list one line per positive; left apart, a query's other positives
    would become its in-batch negatives. A text that is a positive anywhere is not a negative.
    """
    by_query: dict[str, TrainExample] = {}
    for ex in examples:
        g = by_query.get(ex.query)
        if g is None:
            by_query[ex.query] = dataclasses.replace(
                ex,
                positives=list(dict.fromkeys(ex.positives)),
                negatives=list(dict.fromkeys(ex.negatives)),
                answers=list(ex.answers),
                scores=dict(ex.scores) if ex.scores is not None else None,
            )
            continue
        _merge(g.positives, ex.positives)
        _merge(g.negatives, ex.negatives)
        _merge(g.answers, ex.answers)
        if (g.scores is None) != (ex.scores is None):
            raise InputError(f"query {ex.query!r}: teacher scores on some of its lines only")
        if ex.scores is not None:
            g.scores = {**ex.scores, **g.scores}  # the first score of a candidate wins
    out = list(by_query.values())
    for g in out:
        pos = set(g.positives)
        g.negatives = [t for t in g.negatives if t not in pos]
    return out


def passage_ids(examples: Iterable[TrainExample]) -> dict[str, int]:
    """A dataset-global text → id map in first-seen order, so equal texts share one id."""
    ids: dict[str, int] = {}
    for ex in examples:
        for t in (*ex.positives, *ex.negatives):
            if t not in ids:
                ids[t] = len(ids)
    return ids
