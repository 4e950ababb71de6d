"""Retrieval metrics against hand-computed values; answer accuracy; classification metrics."""

import math

import numpy as np
import pytest

from dualenc.metrics import (
    answer_accuracy,
    classification_metrics,
    evaluate_run,
    has_answer,
    recall_curve,
)

# q1: d2 and d3 TIE at 2.0; trec_eval breaks ties by doc id descending, so the ranking is
#     d1, d3, d2, d4 with relevance 1, 2, 0, 0 (d9 relevant but never retrieved).
# q2: nothing relevant retrieved.  q3: judged but absent from the run (counts as 0).
QRELS = {"q1": {"d1": 1, "d3": 2, "d9": 1}, "q2": {"d2": 1}, "q3": {"d7": 1}}
RUN = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 2.0, "d4": 1.0}, "q2": {"d5": 1.0, "d6": 0.5}}

# q1 by hand: DCG = 1/log2(2) + 2/log2(3) = 2.261860; ideal (2, 1, 1) =
# 2 + 1/log2(3) + 1/log2(4) = 3.130930; nDCG = 0.722424.  (Had d2 been ranked before d3,
# DCG would be 1 + 2/log2(4) = 2.0 and nDCG 0.638792: this pins the tie-breaking.)
Q1_NDCG = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3) + 0.5)
Q1 = {
    "nDCG@10": Q1_NDCG,
    "nDCG@3": Q1_NDCG,
    "RR@10": 1.0,
    "R@2": 2 / 3,
    "R@10": 2 / 3,
    "AP": (1 / 1 + 2 / 2) / 3,
    "P@2": 1.0,
    "P@10": 0.2,
}


def test_hand_values_with_ties_and_misses():
    agg, per_q = evaluate_run(RUN, QRELS, tuple(Q1))
    assert Q1_NDCG == pytest.approx(0.722424, abs=1e-6)
    for name, v in Q1.items():
        assert per_q["q1"][name] == pytest.approx(v, abs=1e-9), name
        assert per_q["q2"][name] == 0.0
        assert per_q["q3"][name] == 0.0
        assert agg[name] == pytest.approx(v / 3, abs=1e-9), name  # mean over 3 judged queries


def test_rr_at_cutoff_and_keys():
    qrels = {"q": {"d3": 1}}
    run = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
    agg, _ = evaluate_run(run, qrels)
    assert list(agg) == ["nDCG@10", "RR@10", "R@10", "R@100", "AP", "P@10"]
    assert agg["RR@10"] == pytest.approx(1 / 3)
    assert agg["nDCG@10"] == pytest.approx(1 / math.log2(4))  # rank 3, one relevant
    assert evaluate_run(run, qrels, ("RR@2",))[0]["RR@2"] == 0.0
    assert recall_curve(run, qrels, (1, 2, 3)) == {1: 0.0, 2: 0.0, 3: 1.0}


def test_empty_qrels_rejected():
    with pytest.raises(ValueError, match="no qrels"):
        evaluate_run(RUN, {})


def test_has_answer_dpr_normalisation():
    assert has_answer("Wilhelm Conrad Röntgen won it in 1901.", ["wilhelm conrad rontgen"]) is False
    assert has_answer("Wilhelm Conrad Röntgen won it in 1901.", ["Wilhelm Conrad Röntgen"])
    assert has_answer("It was released on May 18, 2018.", ["may 18 , 2018"])
    assert not has_answer("The catalogue", ["cat"])  # whole tokens only
    assert not has_answer("anything", [""])


def test_answer_accuracy_hand_values():
    texts = {"a": "Paris is the capital", "b": "Lyon is big", "c": "Berlin wall"}
    run = {"q1": {"b": 2.0, "a": 1.0}, "q2": {"c": 5.0}, "q3": {"a": 1.0, "b": 0.5}}
    answers = {"q1": ["Paris"], "q2": ["Rome"], "q3": ["paris"], "q4": ["x"]}
    # q1 first hit at rank 2, q2 no hit, q3 hit at rank 1, q4 not in the run: 4 questions.
    acc = answer_accuracy(run, texts, answers, ks=(1, 2, 5))
    assert acc == {"Acc@1": 0.25, "Acc@2": 0.5, "Acc@5": 0.5}


def test_classification_hand_values():
    y_true = ["pos", "pos", "pos", "neg", "neg", "neu"]
    y_pred = ["pos", "neg", "pos", "neg", "pos", "neg"]
    m = classification_metrics(y_true, y_pred, ["pos", "neg", "neu"])
    # confusion rows=true (pos, neg, neu), cols=pred: pos: 2,1,0; neg: 1,1,0; neu: 0,1,0
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert m["accuracy"] == pytest.approx(3 / 6)
    # pos: P = 2/3, R = 2/3, F1 = 2/3; neg: P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4;
    # neu: never predicted, never right: P = R = F1 = 0.
    pc = m["per_class"]
    assert pc["pos"]["precision"] == pytest.approx(2 / 3) and pc["pos"]["f1"] == pytest.approx(
        2 / 3
    )
    assert pc["neg"]["precision"] == pytest.approx(1 / 3) and pc["neg"]["recall"] == 0.5
    assert pc["neg"]["f1"] == pytest.approx(0.4)
    assert pc["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)
    assert m["macro"]["precision"] == pytest.approx(np.mean([2 / 3, 1 / 3, 0]))


def test_classification_bad_input():
    with pytest.raises(ValueError, match="labels not in"):
        classification_metrics([0, 1], [0, 2], [0, 1])
    with pytest.raises(ValueError, match="items"):
        classification_metrics([0, 1], [0], [0, 1])
