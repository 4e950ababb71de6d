"""The cross-encoder train loop (config.task == 'cross'): pair classification or reranking.

Same machinery as the bi-encoder loop (`dualenc.trainer`): the config is validated and the data
read before anything is written, then mesh, sharded state (`steps.create_state`), the jitted
step with the state donated, Orbax checkpoints holding the data position and the early-stopping
record, SIGTERM preemption, TensorBoard on process 0. Every `eval.every_steps` (and at the end)
the dev set is evaluated; the best params by `cross.eval_metric` are written to WORKDIR/best/
and training stops after `cross.patience` evals without improvement. The best is then evaluated
on test and exported to WORKDIR/export/ (a transformers `*ForSequenceClassification` dir);
WORKDIR/metrics.json holds the dev history, best step and test figures.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import config as config_lib
from dualenc import (
    cross_eval,
    cross_model,
    cross_steps,
    multihost,
    optim,
    rerank,
    sharding,
    steps,
    trainer,
)
from dualenc.checkpoint import Checkpointer, PreemptionGuard
from dualenc.data import cross_data
from dualenc.data.beir import load_beir


@dataclasses.dataclass
class Early:
    """The early-stopping record (kept in the checkpoint's data state, so resume keeps it)."""

    history: list = dataclasses.field(default_factory=list)  # [{step, metric, ...}]
    best: float | None = None
    best_step: int = 0
    bad: int = 0  # evals since the last improvement
    stopped: bool = False

    def update(self, step: int, value: float, patience: int) -> bool:
        """Records an eval; True if it is a new best (ties keep the earlier step)."""
        self.history.append({"step": int(step), "metric": float(value)})
        if self.best is None or value > self.best:
            self.best, self.best_step, self.bad = float(value), int(step), 0
            return True
        self.bad += 1
        if patience > 0 and self.bad >= patience:
            self.stopped = True
        return False


def build_data(config, model: cross_model.CrossModel):
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
        return pipeline, cross_eval.PairEval(rr, x, dev, test)
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
    return pipeline, cross_eval.RerankEval(rr, config, dev_ds, dev_root, test)


def train_and_evaluate(config, workdir) -> dict:
    """Trains a cross-encoder per `config` in `workdir` (resuming from it); returns metrics."""
    mesh = steps.build_mesh(config)
    config_lib.validate(config, mesh.devices.size, jax.process_count())
    x = config.cross
    model = cross_model.load_cross_model(config.model, int(x.num_labels))
    pipeline, evaluator = build_data(config, model)
    workdir = multihost.epath(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = config.train
    num_steps = int(t.num_steps)
    if num_steps <= 0:
        num_steps = max(1, round(float(t.num_epochs) * pipeline.steps_per_epoch))
    tx, schedule = optim.make_optimizer(t, num_steps)
    rules = steps.mesh_rules(config)
    ck = config.checkpoint
    ckpt = Checkpointer(workdir, keep=int(ck.keep), every_steps=int(ck.every_steps))
    early, start = Early(), 0
    if ckpt.latest_step() is not None:
        target = steps.abstract_state(model.params, tx, mesh, rules)
        state, data_state, start = ckpt.restore(target)
        pipeline.set_state(data_state.get("pipeline", {}))
        early = Early(**data_state.get("early", {}))
        state_sh = jax.tree.map(lambda a: a.sharding, target)
    else:
        state, state_sh = steps.create_state(model.params, tx, mesh, rules)
    step = cross_steps.make_train_step(model.ce, x, tx, schedule, bool(t.dropout))
    step_fn = steps.CompiledStep(steps.jit_train_step(step, state_sh, mesh))
    seed, impl = int(config.seed), t.rng_impl
    rng = jax.jit(lambda: jax.random.key(seed, impl=impl), out_shardings=NamedSharding(mesh, P()))()
    trainer._log(
        f"cross-encoder {model.source}: {x.loss} loss, {num_steps} steps, start {start}; "
        f"mesh {dict(mesh.shape)}"
    )
    run = _Run(config, workdir, mesh, model, pipeline, evaluator, ckpt, step_fn, rng, num_steps)
    run.writer = trainer._writer(workdir)
    with PreemptionGuard() as guard:
        state, logged, preempted = _loop(run, state, start, early, guard)
    final = int(state["step"])
    if final > start:
        _save(run, final, state, early)
    ckpt.close()
    results: dict[str, Any] = {"step": final, "preempted": preempted, "log": logged}
    results["compile_seconds"] = step_fn.compile_seconds
    if preempted:
        trainer._log(f"preempted: checkpoint at step {final} saved; rerun to resume")
        return results
    results.update(_finish(run, multihost.to_host(state["params"]), early))
    if run.writer is not None:
        run.writer.close()
    multihost.write_on_main(
        trainer._write_json, workdir / "metrics.json", results, barrier_name="x"
    )
    return results


@dataclasses.dataclass
class _Run:
    config: Any
    workdir: Any
    mesh: Any
    model: cross_model.CrossModel
    pipeline: cross_data.CrossPipeline
    evaluator: Any
    ckpt: Checkpointer
    step_fn: steps.CompiledStep
    rng: jax.Array
    num_steps: int
    writer: Any = None
    saved: int = -1  # the last step checkpointed
    best_params: Any = None  # host copy of the best params seen by this process (this run)


def _names(run: _Run) -> list[str]:
    return cross_data.label_names(run.config.cross)


def _save_best(run: _Run, host_params, step: int, dev: dict) -> None:
    extra = {"step": int(step), "dev_metric": run.config.cross.eval_metric}
    extra["dev_value"] = cross_eval.metric_value(dev, run.config.cross.eval_metric)
    multihost.write_on_main(
        cross_model.save_seq_cls,
        run.model,
        host_params,
        Path(run.workdir) / "best",
        label_names=_names(run),
        max_length=int(run.config.cross.max_length),
        extra=extra,
        barrier_name="best",
    )


def _evaluate(run: _Run, state, step: int, early: Early) -> None:
    """Dev eval at `step`: history, best dir, patience."""
    host = multihost.to_host(state["params"])
    dev = run.evaluator.dev_metrics(host)
    value = cross_eval.metric_value(dev, run.config.cross.eval_metric)
    improved = early.update(step, value, int(run.config.cross.patience))
    early.history[-1]["dev"] = dev
    if improved:
        run.best_params = host  # every process decides alike: no shared filesystem needed
        _save_best(run, host, step, dev)
    trainer._write_scalars(run.writer, "dev", {run.config.cross.eval_metric: value}, step)
    tag = " (best)" if improved else f" (best {early.best:.4f} at step {early.best_step})"
    if "before" in dev:  # reranking: the first stage's figure, the bar the reranker must pass
        first = cross_eval.metric_value({"after": dev["before"]}, run.config.cross.eval_metric)
        tag += f"; first stage {first:.4f}"
    trainer._log(f"step {step}: dev {run.config.cross.eval_metric} {value:.4f}{tag}")


def _loop(run: _Run, state, start: int, early: Early, guard):
    """Steps start+1..num_steps, evaluating and checkpointing; stops early after `patience`."""
    c = run.config
    log_every, eval_every = int(c.log.every_steps), int(c.eval.every_steps)
    logged, window, t0 = [], [], time.perf_counter()
    step, preempted = start, False
    while step < run.num_steps and not early.stopped:
        batch = sharding.shard_batch(next(run.pipeline), run.mesh)
        compiled0 = run.step_fn.compile_seconds
        state, metrics = run.step_fn(state, batch, run.rng)
        t0 += run.step_fn.compile_seconds - compiled0
        step += 1
        window.append(metrics)
        if step % log_every == 0 or step == run.num_steps:
            logged.append({"step": step, **_log_window(run, window, step, t0)})
            window, t0 = [], time.perf_counter()
        is_last = step == run.num_steps
        if run.evaluator is not None and (
            (eval_every > 0 and step % eval_every == 0) or (is_last and eval_every >= 0)
        ):
            _evaluate(run, state, step, early)
            _save(run, step, state, early)
            t0 = time.perf_counter()
        if early.stopped:
            trainer._log(f"early stop at step {step}: no better dev metric in {early.bad} evals")
        if guard.should_stop():
            preempted = True
            break
        if run.ckpt.should_save(step) and not is_last:
            _save(run, step, state, early)
    return state, logged, preempted


def _save(run: _Run, step: int, state, early: Early) -> None:
    """Checkpoint of `step` (once) with the data position and the early-stopping record."""
    if run.saved == step:
        return
    run.saved = step
    run.ckpt.save(step, state, {"pipeline": run.pipeline.get_state(), "early": vars(early)})


def _log_window(run: _Run, window: list, step: int, t0: float) -> dict:
    host = [jax.device_get(m) for m in window]
    for m in host:
        if not np.isfinite(float(m["loss"])):
            raise trainer.NonFiniteLossError(f"non-finite loss {float(m['loss'])} at step {step}")
    for m in host:
        m.pop("num_tokens")
    out = {k: float(np.mean([float(m[k]) for m in host])) for k in host[-1]}
    seconds = max(time.perf_counter() - t0, 1e-9)
    out["examples_per_sec"] = len(host) * int(run.config.train.batch_size) / seconds
    trainer._write_scalars(run.writer, "train", out, step)
    trainer._log(
        f"step {step}: loss {out['loss']:.4f} acc {out['accuracy']:.3f} lr {out['lr']:.2e} "
        f"|g| {out['grad_norm']:.3f} {out['examples_per_sec']:.1f} ex/s"
    )
    return out


def _finish(run: _Run, final_params, early: Early) -> dict:
    """Best params (kept in memory, or WORKDIR/best after a resume; else the final ones) →
    test metrics and export/."""
    c, out = run.config, {}
    best_dir = Path(run.workdir) / "best"
    params, best_step = final_params, int(run.num_steps)
    if run.evaluator is not None and early.best is not None:
        if run.best_params is not None:  # found in this run
            params = run.best_params
        else:  # found before a resume: WORKDIR/best (shared with process 0 on several hosts)
            if multihost.process_count() > 1:
                multihost.barrier("cross:best")
            params = cross_model.load_params(run.model, best_dir)
        best_step = early.best_step
        dev = next(h["dev"] for h in early.history if h["step"] == early.best_step)
        out["dev"] = dev
        out["test"] = run.evaluator.test_metrics(params, dev)
        out["dev_history"] = [{"step": h["step"], "metric": h["metric"]} for h in early.history]
        out["eval_metric"] = c.cross.eval_metric
        out["best_dev"] = early.best
        out["early_stopped"] = early.stopped
        if out["test"]:
            _log_test(c, out["test"])
    out["best_step"] = best_step
    if c.export.enabled:
        export = Path(run.workdir) / "export"
        multihost.write_on_main(
            cross_model.save_seq_cls,
            run.model,
            params,
            export,
            label_names=_names(run),
            max_length=int(c.cross.max_length),
            extra={"step": best_step},
            barrier_name="export",
        )
        out["export_dir"] = str(export)
        trainer._log(f"exported the step-{best_step} cross-encoder to {export}")
    return out


def _log_test(c, test: dict) -> None:
    if "after" in test:
        b, a = test["before"]["nDCG@10"], test["after"]["nDCG@10"]
        trainer._log(f"test nDCG@10: first stage {b:.4f} -> reranked {a:.4f} ({a - b:+.4f})")
        if "fusion" in test:
            f = test["fusion"]
            v = f["after"]["nDCG@10"]
            trainer._log(
                f"test nDCG@10: first stage + {f['weight']:g} x CE ({f['method']}, weight from "
                f"dev) {v:.4f} ({v - b:+.4f})"
            )
    elif "spearman" in test:
        trainer._log(f"test Spearman {test['spearman']:.2f} Pearson {test['pearson']:.2f}")
    else:
        f1 = (test.get("binary") or test["macro"])["f1"]
        trainer._log(f"test accuracy {test['accuracy']:.4f} F1 {f1:.4f}")
