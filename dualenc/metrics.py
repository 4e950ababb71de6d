"""Retrieval metrics (ir-measures / trec_eval semantics), DPR answer accuracy, classification.

Aggregates average over every query in the qrels: a judged query missing from the run scores 0
(trec_eval -c), so dropping hard queries can never raise a score.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

from dualenc.runs import Run

Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@10", "R@100", "AP", "P@10")


def evaluate_run(
    run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Returns ({measure name: mean over judged queries}, {qid: {measure: value}}).

    Ties in scores are broken as trec_eval does (by doc id, descending).
    """
    import ir_measures

    if not qrels:
        raise ValueError("no qrels to evaluate against")
    parsed = [ir_measures.parse_measure(m) for m in measures]
    names = {m: str(m) for m in parsed}
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run = {
        q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs
    }
    per_query = {q: {names[m]: 0.0 for m in parsed} for q in qrels}
    if run:
        for r in ir_measures.iter_calc(parsed, qrels, run):
            per_query[r.query_id][names[r.measure]] = float(r.value)
    agg = {names[m]: float(np.mean([per_query[q][names[m]] for q in qrels])) for m in parsed}
    return agg, per_query


def recall_curve(
    run: Run, qrels: Qrels, ks: Sequence[int] = (1, 2, 5, 10, 20, 50, 100)
) -> dict[int, float]:
    """R@k for several k (for plots): fraction of relevant docs in the top k, query-averaged."""
    agg, _ = evaluate_run(run, qrels, [f"R@{k}" for k in ks])
    return {k: agg[f"R@{k}"] for k in ks}


# DPR answer matching: NFD unicode, lower-cased regex tokens, answer tokens as a contiguous
# token subsequence of the passage (DPR's `has_answer` with its SimpleTokenizer).
_TOKEN = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFD", text).lower())


def has_answer(passage: str, answers: Sequence[str]) -> bool:
    """True if any answer's tokens occur contiguously in the passage's tokens."""
    p = _tokens(passage)
    for ans in answers:
        a = _tokens(ans)
        if a and any(p[i : i + len(a)] == a for i in range(len(p) - len(a) + 1)):
            return True
    return False


def answer_accuracy(
    run: Run,
    corpus_texts: Mapping[str, str],
    answers: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (5, 20, 50, 100),
) -> dict[str, float]:
    """DPR top-k accuracy: share of questions with an answer in one of the top-k passages.

    Averages over every question in `answers` (a question absent from the run counts as a miss).
    Keys are 'Acc@k'.
    """
    if not answers:
        raise ValueError("no answers to evaluate against")
    hits = {k: 0 for k in ks}
    for qid, ans in answers.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: -x[1])
        first = next(
            (i for i, (d, _) in enumerate(ranked[: max(ks)]) if has_answer(corpus_texts[d], ans)),
            None,
        )
        for k in ks:
            hits[k] += first is not None and first < k
    return {f"Acc@{k}": hits[k] / len(answers) for k in ks}


def classification_metrics(
    y_true: Sequence, y_pred: Sequence, labels: Sequence
) -> dict[str, object]:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix.

    confusion[i][j] counts examples of true label labels[i] predicted as labels[j]; a class with
    no predictions (or no examples) gets precision (recall) 0, as scikit-learn's zero_division=0.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred {len(y_pred)}")
    if not len(y_true):
        raise ValueError("no examples")
    pos = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({str(y) for y in list(y_true) + list(y_pred) if y not in pos})
    if unknown:
        raise ValueError(f"labels not in {list(labels)}: {unknown}")
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[pos[t], pos[p]] += 1
    tp = np.diag(cm).astype(np.float64)
    pred, true = cm.sum(0), cm.sum(1)
    prec = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    rec = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    per_class = {
        str(lab): {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(true[i]),
        }
        for i, lab in enumerate(labels)
    }
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "per_class": per_class,
        "macro": {
            "precision": float(prec.mean()),
            "recall": float(rec.mean()),
            "f1": float(f1.mean()),
        },
        "confusion": cm.tolist(),
        "labels": [str(lab) for lab in labels],
    }


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Precision, recall and F1 of the positive class (label 1), scikit-learn's zero_division=0.

    Paraphrase and duplicate detection report these (GLUE MRPC/QQP F1), not the macro average.
    """
    t, p = np.asarray(y_true) == 1, np.asarray(y_pred) == 1
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred {p.size}")
    tp = float(np.sum(t & p))
    prec = tp / p.sum() if p.sum() else 0.0
    rec = tp / t.sum() if t.sum() else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": float(prec), "recall": float(rec), "f1": float(f1)}


def best_f1_threshold(scores: Sequence[float], y_true: Sequence[int]) -> tuple[float, float]:
    """(threshold, F1): predicting 1 iff score >= threshold maximises the positive-class F1.

    Thresholds sit midway between consecutive distinct scores (so a test score equal to a dev
    score is not on the edge); ties in F1 go to the highest threshold. O(n log n).
    """
    s, t = np.asarray(scores, np.float64), np.asarray(y_true) == 1
    if s.shape != t.shape or not s.size:
        raise ValueError(f"need as many labels as scores (> 0), got {t.size} and {s.size}")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[s[1:] != s[:-1], True]  # end of each group of equal scores
    tp = np.cumsum(t)[last].astype(np.float64)  # positives predicted when cutting after a group
    n_pred = np.flatnonzero(last) + 1.0
    f1 = 2 * tp / (n_pred + t.sum())  # = 2PR/(P+R), and 0 when tp == 0
    best = int(np.argmax(f1))  # first max = highest threshold
    distinct = s[last]
    lower = distinct[best + 1] if best + 1 < len(distinct) else distinct[best] - 1.0
    return float((distinct[best] + lower) / 2), float(f1[best])


def confusion_text(confusion: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The confusion matrix as an aligned plain-text table (rows: true, columns: predicted)."""
    names = [str(lab) for lab in labels]
    head = ["true \\ pred", *names]
    rows = [[names[i], *(str(int(v)) for v in row)] for i, row in enumerate(confusion)]
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [head, *rows])


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as scipy.stats.rankdata's 'average')."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv = np.unique(x, return_inverse=True)
    return (np.bincount(inv, ranks) / np.bincount(inv))[inv]


def correlations(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman x 100 of predicted vs gold graded scores (the STS figures)."""
    p, g = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
    if len(p) != len(g) or len(p) < 2:
        raise ValueError(f"need >= 2 paired scores, got {len(p)} and {len(g)}")

    def r(a, b):
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt(np.sum(a * a) * np.sum(b * b))
        return float(np.sum(a * b) / den) if den > 0 else 0.0

    return {"pearson": 100 * r(p, g), "spearman": 100 * r(_ranks(p), _ranks(g)), "n": len(p)}
