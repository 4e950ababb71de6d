"""Dev / test evaluation of a cross-encoder during training.

Pair classification: accuracy, binary and macro P/R/F1 and the confusion matrix (`classify`
helpers); for two classes the decision threshold maximising F1 on dev is applied to test. Graded
pairs (`cross.label_scale`, STS): Pearson and Spearman x 100 of sigmoid(logit) vs the gold score.
Reranking: a first-stage run (BM25, dense or hybrid via `retrieval.evaluate.retrieve`) is computed
once per split, then its top `cross.rerank_top` docs are rescored with the current params;
nDCG@10 etc. before (first stage) and after. With `cross.fusion`, test also reports the first
stage fused with the cross-encoder (first + w * CE after per-query normalisation, the
`index.fusion` rule), w chosen on dev reranked at the test depth: a small reranker trained on a
few hundred queries can add to a strong first stage without being better than it alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dualenc import metrics
from dualenc.cross.data import PairData, label_names
from dualenc.data.beir import BeirDataset
from dualenc.index import fusion
from dualenc.inference import classify, rerank
from dualenc.io import InputError
from dualenc.retrieval import engine, eval_config, evaluate


def metric_value(m: dict, name: str) -> float:
    """The named selection metric out of a split's metrics (F1 = binary F1 for 2 classes)."""
    if name == "F1":
        return float((m.get("binary") or m["macro"])["f1"])
    if name == "macro_F1":
        return float(m["macro"]["f1"])
    if name == "accuracy":
        return float(m["accuracy"])
    if name in ("spearman", "pearson"):
        return float(m[name])
    return float(m["after"][name])


class PairEval:
    """Classification of dev (and, at the end, test) pair files with the current params."""

    def __init__(self, rr: rerank.Reranker, xcfg, dev: PairData, test: PairData | None):
        if not len(dev.labels):
            raise InputError("empty dev set", path=dev.source)
        self.rr, self.x, self.dev, self.test = rr, xcfg, dev, test
        self.names = label_names(xcfg)
        self.binary = len(self.names) == 2 and rr.ce.num_labels <= 2
        self.graded = float(xcfg.label_scale) > 0

    def _graded(self, params, data: PairData) -> dict:
        score = classify.graded_scores(self._logits(params, data))
        return metrics.correlations(score, data.labels)

    def _logits(self, params, data: PairData) -> np.ndarray:
        rr = dataclasses.replace(self.rr, params=params)  # fresh: no stale placed params
        return classify.predict_logits(
            rr,
            data.text_a,
            data.text_b,
            batch_size=int(self.x.eval_batch_size),
            symmetric=bool(self.x.symmetric),
        )

    def dev_metrics(self, params) -> dict:
        if self.graded:
            return self._graded(params, self.dev)
        z = self._logits(params, self.dev)
        threshold = None
        if self.binary:
            threshold, _ = metrics.best_f1_threshold(classify.scores_of(z), self.dev.labels)
        m = classify.split_metrics(self.dev.labels, classify.predict(z, threshold), self.names)
        m["threshold"] = threshold
        m["argmax"] = classify.split_metrics(
            self.dev.labels, classify.predict(z, 0.0 if self.binary else None), self.names
        )
        return m

    def test_metrics(self, params, dev_m: dict) -> dict:
        """Test figures at the dev threshold (and at the argmax, for reference)."""
        if self.test is None:
            return {}
        if self.graded:
            return self._graded(params, self.test)
        z = self._logits(params, self.test)
        out = classify.split_metrics(
            self.test.labels, classify.predict(z, dev_m.get("threshold")), self.names
        )
        out["threshold"] = dev_m.get("threshold")
        out["threshold_source"] = "dev (max F1)" if self.binary else "argmax"
        argmax = classify.predict(z, 0.0 if self.binary else None)
        out["argmax"] = classify.split_metrics(self.test.labels, argmax, self.names)
        return out


def _eval_cfg(config, root: str):
    c = eval_config.get_config()
    x = config.cross
    c.unlock()
    c.data = str(root)
    c.index = "exact" if x.first_stage == "dense" else x.first_stage
    c.model = str(x.first_stage_model or config.model.name_or_path)
    c.k = max(int(x.rerank_top), int(x.dev_rerank_top))
    c.progress = False
    return c


class RerankEval:
    """Reranking of a fixed first-stage run of dev / test queries with the current params."""

    def __init__(self, rr: rerank.Reranker, config, dev: BeirDataset, dev_root: str, test=None):
        self.rr, self.config, self.x = rr, config, config.cross
        self.k_values = tuple(int(k) for k in config.eval.k_values)
        self.measures = engine.measures_for(self.k_values)
        dev_top = int(self.x.dev_rerank_top) or int(self.x.rerank_top)
        self.dev = self._prepare(dev, dev_root, dev_top)
        self.test = self._prepare(*test, int(self.x.rerank_top)) if test else None
        self.dev_full = None  # dev at the test depth: tunes the fusion weight (at test time)
        if self.x.fusion and self.test is not None:
            same = dev_top == int(self.x.rerank_top)
            self.dev_full = self.dev if same else self._prepare(dev, dev_root, self.test["top"])

    def _prepare(self, ds: BeirDataset, root: str, top: int) -> dict:
        if not ds.qrels:
            raise InputError("empty dev set: no judged queries", path=root)
        doc_ids, texts = engine.corpus_texts(ds)
        qids, queries = engine.judged_queries(ds)
        info: dict = {}
        run, _, _ = evaluate.retrieve(
            _eval_cfg(self.config, root), doc_ids, texts, qids, queries, info
        )
        run = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:top]) for q, d in run.items()}
        before, _ = metrics.evaluate_run(run, ds.qrels, self.measures)
        return {
            "ds": ds,
            "run": run,
            "queries": dict(zip(qids, queries, strict=True)),
            "docs": dict(zip(doc_ids, texts, strict=True)),
            "before": before,
            "top": top,
        }

    def _rerank(self, params, split: dict):
        return rerank.rerank_run(
            dataclasses.replace(self.rr, params=params),
            split["run"],
            split["queries"],
            split["docs"],
            top_k=split["top"],
            batch_size=int(self.x.eval_batch_size),
            progress=False,
        )

    def _evaluate(self, params, split: dict, run=None) -> dict:
        run = self._rerank(params, split) if run is None else run
        after, _ = metrics.evaluate_run(run, split["ds"].qrels, self.measures)
        return {
            "before": split["before"],
            "after": after,
            "first_stage": self.x.first_stage,
            "rerank_top": split["top"],
            "num_queries": len(split["ds"].qrels),
        }

    def dev_metrics(self, params) -> dict:
        return self._evaluate(params, self.dev)

    def test_metrics(self, params, _dev_m: dict) -> dict:
        if self.test is None:
            return {}
        if not self.x.fusion:
            return self._evaluate(params, self.test)
        run = self._rerank(params, self.test)
        out = self._evaluate(params, self.test, run)
        out["fusion"] = self.fused(params, run)
        return out

    def fused(self, params, test_run) -> dict:
        """Test metrics of first stage + w * CE with w maximising `cross.eval_metric` on dev."""
        method, metric, dev = self.x.fusion, str(self.x.eval_metric), self.dev_full
        grid = fusion.DEFAULT_GRID + (10.0, 100.0)  # 0 = first stage only; 100 ~ CE only
        weight, dev_scores = fusion.tune_weight(
            dev["run"], self._rerank(params, dev), dev["ds"].qrels, metric, grid, method
        )
        run = fusion.fuse(self.test["run"], test_run, method, weight)
        after, _ = metrics.evaluate_run(run, self.test["ds"].qrels, self.measures)
        return {
            "method": method,
            "weight": weight,
            "dev": {str(w): v for w, v in dev_scores.items()},
            "after": after,
        }
