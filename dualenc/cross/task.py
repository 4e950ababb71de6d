"""The cross-encoder task (config.task == 'cross'): pair classification or reranking.

What it hands the loop: the (query, passage) or (a, b) batches of `cross.data`, the pure step of
`cross.step`, dev evaluation (`cross.evaluation`: classification / STS figures, or reranking the
first stage of a retrieval dev set) with the best step kept by `cross.eval_metric` and early
stopping after `cross.patience` evals, the best params written to WORKDIR/best/, test figures of
the best params, and a transformers `*ForSequenceClassification` export at WORKDIR/export/.
"""

from __future__ import annotations

import functools
from pathlib import Path

from dualenc import multihost
from dualenc.cross import data as cross_data
from dualenc.cross import evaluation
from dualenc.cross import model as model_lib
from dualenc.cross.step import make_train_step
from dualenc.data.beir import load_beir
from dualenc.inference import rerank
from dualenc.training.logs import log
from dualenc.training.task import Task


def build(config, resumed: bool) -> Task:
    """The cross-encoder Task; bad input raises InputError before anything is written."""
    del resumed  # the model dir is read either way: it also gives the tokenizer and label head
    x = config.cross
    model = model_lib.load_cross_model(config.model, int(x.num_labels))
    pipeline, evaluator = build_data(config, model)
    metric = str(x.eval_metric)
    return Task(
        name="cross",
        describe=f"cross-encoder {model.source}, {x.loss} loss",
        params=model.params,
        pipeline=pipeline,
        make_step=lambda tx, schedule: make_train_step(
            model.ce, x, tx, schedule, bool(config.train.dropout)
        ),
        evaluate=None if evaluator is None else evaluator.dev_metrics,
        eval_metric=metric,
        dev_value=lambda dev: evaluation.metric_value(dev, metric),
        dev_note=lambda dev: first_stage_note(dev, metric),
        patience=int(x.patience),
        keep_best=True,
        save_best=functools.partial(save_best, config, model),
        load_best=lambda best_dir: model_lib.load_params(model, best_dir),
        finish=lambda params, dev: test_figures(config, evaluator, params, dev),
        export=functools.partial(export, config, model),
        export_note="exported the cross-encoder",
    )


def build_data(config, model: model_lib.CrossModel):
    """(CrossPipeline, evaluator or None); bad input raises InputError before any write."""
    d, x = config.data, config.cross
    fixed = bool(x.pad_to_max_length)
    common = dict(
        global_batch_size=int(config.train.batch_size),
        max_length=int(x.max_length),
        seed=int(config.seed),
        fixed_length=fixed,
    )
    rr = rerank.Reranker(model.ce, model.params, model.tokenizer, int(x.max_length), "training")
    evals = int(config.eval.every_steps) >= 0
    if d.train.format == "pairs":
        train = cross_data.read_pair_data(d.train.path, x)
        train = cross_data.symmetrize(train) if x.symmetric else train
        pipeline = cross_data.CrossPipeline(model.tokenizer, pairs=train, **common)
        if not evals:
            return pipeline, None
        dev = cross_data.read_pair_data(d.dev.path, x)
        test = cross_data.read_pair_data(d.test.path, x) if d.test.path else None
        return pipeline, evaluation.PairEval(rr, x, dev, test)
    examples, dev_ds = cross_data.retrieval_examples(config)
    pipeline = cross_data.CrossPipeline(
        model.tokenizer, examples=examples, num_negatives=int(d.num_negatives), **common
    )
    if not evals:
        return pipeline, None
    dev_root = d.train.path if dev_ds is not None else d.dev.path
    if dev_ds is None:
        dev_ds = load_beir(d.dev.path, d.dev.split, allow_empty_docs=True)
    test = None
    if d.test.path:
        test = (load_beir(d.test.path, d.test.split, allow_empty_docs=True), d.test.path)
    return pipeline, evaluation.RerankEval(rr, config, dev_ds, dev_root, test)


def first_stage_note(dev: dict, metric: str) -> str:
    """Reranking: the first stage's figure, the bar the reranker must pass."""
    if "before" not in dev:
        return ""
    return f"; first stage {evaluation.metric_value({'after': dev['before']}, metric):.4f}"


def save_best(config, model: model_lib.CrossModel, host_params, step: int, dev: dict, out) -> None:
    """`out` (WORKDIR/best/): the best dev step's model (process 0 writes, all wait)."""
    x = config.cross
    extra = {"step": int(step), "dev_metric": x.eval_metric}
    extra["dev_value"] = evaluation.metric_value(dev, x.eval_metric)
    multihost.write_on_main(save_dir, config, model, host_params, out, extra, barrier_name="best")


def test_figures(config, evaluator, params, dev: dict | None) -> dict:
    """Test metrics of the chosen (best) params, logged; {} without a dev/test evaluator."""
    if evaluator is None or dev is None:
        return {}
    test = evaluator.test_metrics(params, dev)
    if test:
        _log_test(config, test)
    return {"test": test}


def export(config, model: model_lib.CrossModel, host_params, out, step: int) -> None:
    """A transformers `*ForSequenceClassification` dir at `out` (process 0)."""
    save_dir(config, model, host_params, out, {"step": int(step)})


def save_dir(config, model: model_lib.CrossModel, host_params, out, extra: dict) -> None:
    """The model as a `*ForSequenceClassification` dir with this task's labels and length, and
    `extra` (step, dev figure) in its dualenc_cross.json: best/ and export/ alike."""
    x = config.cross
    model_lib.save_seq_cls(
        model,
        host_params,
        Path(out),
        label_names=cross_data.label_names(x),
        max_length=int(x.max_length),
        extra=extra,
    )


def _log_test(c, test: dict) -> None:
    if "after" in test:
        b, a = test["before"]["nDCG@10"], test["after"]["nDCG@10"]
        log(f"test nDCG@10: first stage {b:.4f} -> reranked {a:.4f} ({a - b:+.4f})")
        if "fusion" in test:
            f = test["fusion"]
            v = f["after"]["nDCG@10"]
            log(
                f"test nDCG@10: first stage + {f['weight']:g} x CE ({f['method']}, weight from "
                f"dev) {v:.4f} ({v - b:+.4f})"
            )
    elif "spearman" in test:
        log(f"test Spearman {test['spearman']:.2f} Pearson {test['pearson']:.2f}")
    else:
        f1 = (test.get("binary") or test["macro"])["f1"]
        log(f"test accuracy {test['accuracy']:.4f} F1 {f1:.4f}")
