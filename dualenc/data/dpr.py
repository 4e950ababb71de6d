"""DPR training data: a JSON list (or JSONL) of {question, answers, positive_ctxs, negative_ctxs,
hard_negative_ctxs}, each ctx {title, text, passage_id?} → `TrainExample`s.

Hard negatives are preferred; plain `negative_ctxs` (random/BM25 in the original release) are only
a fallback when a question has no hard ones. Errors name file:entry (JSON) or file:line (JSONL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dualenc.data.examples import TrainExample, passage_text, validate_example
from dualenc.io import InputError, open_text, read_jsonl, require_str


def _ctx_texts(obj: dict, key: str, *, path, line: int) -> list[str]:
    ctxs = obj.get(key) or []
    if not isinstance(ctxs, list):
        raise InputError("expected a list of passages", path=path, line=line, field=key)
    out = []
    for i, ctx in enumerate(ctxs):
        field = f"{key}[{i}]"
        if not isinstance(ctx, dict):
            raise InputError("expected a passage object", path=path, line=line, field=field)
        title = ctx.get("title") or ""
        text = ctx.get("text")
        if not isinstance(title, str) or not isinstance(text, str) or not text.strip():
            raise InputError(
                "empty or non-string passage text", path=path, line=line, field=f"{field}.text"
            )
        out.append(passage_text(title, text))
    return out


def example_from_dpr(obj: dict, *, qid: str, path, line: int) -> TrainExample:
    """One DPR record → TrainExample; `line` is the JSONL line or the JSON list entry index."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    question = require_str(obj, "question", path=path, line=line)
    positives = _ctx_texts(obj, "positive_ctxs", path=path, line=line)
    if not positives:
        raise InputError(
            "question has no positive passage", path=path, line=line, field="positive_ctxs"
        )
    negatives = _ctx_texts(obj, "hard_negative_ctxs", path=path, line=line)
    if not negatives:
        negatives = _ctx_texts(obj, "negative_ctxs", path=path, line=line)
    answers = obj.get("answers") or []
    if not isinstance(answers, list):
        answers = [answers]
    qid = str(obj.get("qid", obj.get("id", qid)))
    ex = TrainExample(
        qid=qid,
        query=question.strip(),
        positives=positives,
        negatives=negatives,
        answers=[str(a) for a in answers],
    )
    return validate_example(ex, path=path, line=line)


def _is_json_list(path: Path) -> bool:
    with open_text(path) as f:
        while True:
            ch = f.read(1)
            if not ch or not ch.isspace():
                return ch == "["


def load_dpr(path: str | os.PathLike) -> list[TrainExample]:
    """Reads DPR JSON (a list; errors name the 0-based entry index) or JSONL (1-based line)."""
    path = Path(path)
    if _is_json_list(path):
        with open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=e.lineno
                ) from None
        items = [(i, obj) for i, obj in enumerate(data)]
    else:
        items = list(read_jsonl(path))
    examples = [
        example_from_dpr(obj, qid=str(k), path=path, line=line)
        for k, (line, obj) in enumerate(items)
    ]
    if not examples:
        raise InputError("no training examples", path=path)
    return examples
