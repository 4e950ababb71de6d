"""The one training loop: every task (`config.task`) runs on it.

`train_and_evaluate(config, workdir)` is what `dualenc.train`, the study and the tests call. The
config is validated and the task's data and model read before anything is written. Every process
runs the same loop on its slice of the global batch, with one step in flight (the bar and the
rates count a step once its results are ready; compile time is reported apart). Checkpoints hold
the state, the data position and the early-stopping record, so a resume is exact; SIGTERM saves
and exits cleanly on every host at the same step. Only process 0 writes shared files (best/,
export/, metrics.json, before_*.json, TensorBoard); the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh
from tqdm import tqdm

from dualenc import multihost, sharding
from dualenc.models import target as precision
from dualenc.retrieval import engine
from dualenc.training import config as config_lib
from dualenc.training import optim
from dualenc.training import state as state_lib
from dualenc.training.checkpoint import Checkpointer, PreemptionGuard
from dualenc.training.logs import log, open_writer, write_json, write_scalars
from dualenc.training.task import Task, build_task


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the first bad step."""


@dataclasses.dataclass
class Early:
    """The dev-evaluation record (kept in the checkpoint's data state, so resume keeps it)."""

    history: list = dataclasses.field(default_factory=list)  # [{step, metric, dev}]
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


@dataclasses.dataclass
class TrainRun:
    """Everything the loop needs besides the (donated, so ever-changing) train state."""

    config: Any
    task: Task
    workdir: epath.Path
    mesh: Mesh
    num_steps: int
    start: int  # the step the run starts from (0, or the restored checkpoint's)
    ckpt: Checkpointer
    step_fn: state_lib.CompiledStep
    rng: jax.Array
    writer: Any  # TensorBoard SummaryWriter on process 0, else None
    saved: int = -1  # the last step checkpointed
    best_params: Any = None  # host copy of the best params seen in this run (keep_best)


def resolve_num_steps(config, pipeline) -> int:
    """`train.num_steps`, or `train.num_epochs` × batches per epoch when num_steps ≤ 0."""
    t = config.train
    if int(t.num_steps) > 0:
        return int(t.num_steps)
    return max(1, int(round(float(t.num_epochs) * max(1, pipeline.steps_per_epoch))))


def setup(config, workdir) -> tuple[TrainRun, dict, Early]:
    """(TrainRun, train state, early-stopping record): config checks, the task (data and model read
    before any write), optimizer, state (restored from the workdir's checkpoint if any) and the
    ahead-of-time compiled step."""
    mesh = state_lib.build_mesh(config)
    config_lib.validate(config, mesh.devices.size, jax.process_count())
    precision.set_precision(config.model.matmul_precision)  # the train step and the dev evals
    workdir, ck = multihost.epath(workdir), config.checkpoint
    open_ckpt = functools.partial(
        Checkpointer, workdir, keep=int(ck.keep), every_steps=int(ck.every_steps)
    )
    # An existing checkpoints/ is opened now (that writes nothing); a new run creates it only
    # after the task has read its data, so bad input leaves no workdir behind.
    ckpt = open_ckpt() if (workdir / "checkpoints").is_dir() else None
    resumed = ckpt is not None and ckpt.latest_step() is not None
    task = build_task(config, resumed)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt or open_ckpt()
    num_steps = resolve_num_steps(config, task.pipeline)
    tx, schedule = optim.make_optimizer(config.train, num_steps)
    rules, early = state_lib.mesh_rules(config), Early()
    if resumed:
        target = state_lib.abstract_state(task.params, tx, mesh, rules)
        state, data_state, start = ckpt.restore(target)
        if "pipeline" in data_state:
            task.pipeline.set_state(data_state["pipeline"])
            early = Early(**data_state.get("early", {}))
        else:  # a checkpoint written before the loop was shared: the pipeline state alone
            task.pipeline.set_state(data_state)
        state_sh, source = jax.tree.map(lambda x: x.sharding, target), f"checkpoint {start}"
    else:
        (state, state_sh), start = state_lib.create_state(task.params, tx, mesh, rules), 0
        source = "initial weights"
    step = task.make_step(tx, schedule)
    run = TrainRun(
        config=config,
        task=task,
        workdir=workdir,
        mesh=mesh,
        num_steps=num_steps,
        start=start,
        ckpt=ckpt,
        step_fn=state_lib.CompiledStep(state_lib.jit_train_step(step, state_sh, mesh), mesh),
        rng=state_lib.make_rng(config, mesh),
        writer=open_writer(workdir),
    )
    log(
        f"{task.name}: {task.describe}; {num_steps} steps, start {start} ({source}); "
        f"mesh {dict(mesh.shape)} over {jax.process_count()} process(es)"
    )
    return run, state, early


def train_and_evaluate(config, workdir) -> dict:
    """Trains per `config` in `workdir` (resuming from it), evaluates and exports; returns the
    final metrics (also written to workdir/metrics.json by process 0)."""
    run, state, early = setup(config, workdir)
    task, split = run.task, config.eval.before_after_split
    before_path = run.workdir / f"before_{split}.json"
    if split and task.split_eval is not None and not run.start:
        before = task.split_eval(multihost.to_host(state["params"]), split)
        multihost.write_on_main(write_json, before_path, before, barrier_name="before")
    with PreemptionGuard() as guard:
        state, last, logged, preempted = run_loop(run, state, early, guard)
    step = int(state["step"])
    if step > run.start:
        _save(run, step, state, early)
    run.ckpt.close()  # waits for the async saves to be finalised
    results: dict[str, Any] = {"step": step, "preempted": preempted, "log": logged}
    results.update({f"train/{k}": v for k, v in last.items()})
    results["compile_seconds"] = run.step_fn.compile_seconds
    if preempted:
        log(f"preempted: checkpoint at step {step} saved; rerun with the same workdir to resume")
    else:
        params = multihost.to_host(state["params"])  # gathered once for eval and export
        results.update(_finish(run, params, early, step, before_path))
    if run.writer is not None:
        run.writer.close()
    if not preempted:
        path = run.workdir / "metrics.json"
        multihost.write_on_main(write_json, path, results, barrier_name="end")
    return results


# ----------------------------------------------------------------------------- the loop


def run_loop(run: TrainRun, state, early: Early, guard) -> tuple[Any, dict, list, bool]:
    """Runs steps run.start+1..run.num_steps (fewer on early stopping or preemption); returns
    (state, last logged metrics, the log, preempted). Dev evaluation every `eval.every_steps`
    and at the last step (unless -1); with `keep_best` a checkpoint follows every evaluation."""
    c = run.config
    log_every, eval_every = int(c.log.every_steps), int(c.eval.every_steps)
    bar = tqdm(
        total=run.num_steps,
        initial=run.start,
        desc=f"train {run.task.name}",
        dynamic_ncols=True,
        disable=not multihost.is_main(),
    )
    window, logged, last = Window(run), [], {}
    step, preempted = run.start, False
    while step < run.num_steps and not early.stopped:
        batch = sharding.shard_batch(next(run.task.pipeline), run.mesh)
        state, metrics = run.step_fn(state, batch, run.rng)
        step += 1
        window.add(step, metrics)
        window.complete(bar, upto=step - 1)  # the previous step; this one keeps running
        is_last = step == run.num_steps
        if step % log_every == 0 or is_last:
            last = window.log(bar, step)
            logged.append({"step": step, **last})
        due = (eval_every > 0 and step % eval_every == 0) or (is_last and eval_every >= 0)
        if run.task.evaluate is not None and due:
            window.complete(bar, upto=step)
            evaluate(run, state, step, early)
            if run.task.keep_best:  # the checkpoint's record matches best/
                _save(run, step, state, early)
            window.restart()
        if early.stopped:
            log(f"early stop at step {step}: no better dev metric in {early.bad} evals")
        if guard.should_stop():  # same answer on every process: all save this step
            preempted = True
            break
        if run.ckpt.should_save(step) and not is_last:
            _save(run, step, state, early)
    if window.history:
        last = window.log(bar, step)
    bar.close()
    return state, last, logged, preempted


def evaluate(run: TrainRun, state, step: int, early: Early) -> None:
    """Dev evaluation at `step` (every process): history, best params, patience, log line."""
    task = run.task
    host = multihost.to_host(state["params"])
    dev = task.evaluate(host)
    value = task.dev_value(dev)
    improved = early.update(step, value, int(task.patience))
    early.history[-1]["dev"] = dev
    if improved and task.keep_best:
        run.best_params = host  # every process decides alike: no shared filesystem needed
        if task.save_best is not None:
            task.save_best(host, step, dev, run.workdir / "best")
    write_scalars(run.writer, "dev", {**dev, task.eval_metric: value}, step)
    tag = " (best)" if improved else f" (best {early.best:.4f} at step {early.best_step})"
    log(f"step {step}: dev {task.eval_metric} {value:.4f}{tag}{task.dev_note(dev)}")


def _save(run: TrainRun, step: int, state, early: Early) -> None:
    """Checkpoint of `step` (once) with the data position and the early-stopping record."""
    if run.saved == step:
        return
    run.saved = step
    data = {"pipeline": run.task.pipeline.get_state(), "early": dataclasses.asdict(early)}
    run.ckpt.save(step, state, data)


def _finish(run: TrainRun, params, early: Early, step: int, before_path) -> dict:
    """Final figures and export: dev (the best step's with `keep_best`, else the last eval's),
    the task's own (e.g. test), the before/after table, and export/ of the chosen params."""
    c, task, out = run.config, run.task, {}
    export_step = step
    if early.history:
        if task.keep_best and early.best is not None:
            if run.best_params is not None:  # found in this run
                params = run.best_params
            else:  # found before a resume: the task reads what process 0 saved
                if multihost.process_count() > 1:
                    multihost.barrier("train:best")
                params = task.load_best(run.workdir / "best")
            export_step = early.best_step
        chosen = early.best_step if task.keep_best else early.history[-1]["step"]
        out["dev"] = next(h["dev"] for h in early.history if h["step"] == chosen)
        out["dev_history"] = [{"step": h["step"], "metric": h["metric"]} for h in early.history]
        out["eval_metric"] = task.eval_metric
        out["best_dev"] = early.best
        out["best_step"] = early.best_step
        out["early_stopped"] = early.stopped
    if task.keep_best:
        out.setdefault("best_step", export_step)
    out.update(task.finish(params, out.get("dev")))
    split = c.eval.before_after_split
    if split and task.split_eval is not None:
        final_dev = not task.keep_best and early.history and early.history[-1]["step"] == step
        reuse = split == c.data.dev.split and final_dev
        out[f"after/{split}"] = out["dev"] if reuse else task.split_eval(params, split)
        if before_path.exists():
            out[f"before/{split}"] = json.loads(before_path.read_text())
            log(engine.format_before_after(out[f"before/{split}"], out[f"after/{split}"], split))
    if c.export.enabled and task.export is not None:
        export = run.workdir / "export"
        multihost.write_on_main(task.export, params, export, export_step, barrier_name="export")
        out["export_dir"] = str(export)
        log(f"{task.export_note} (step {export_step}) to {export}")
    return out


# ----------------------------------------------------------------------------- log window


class Window:
    """Step metrics since the last log line, and the wall time of the steps known complete."""

    def __init__(self, run: TrainRun):
        self.run, self.history, self.done = run, [], run.start
        self.restart()

    def restart(self) -> None:
        self.t0, self.compile0 = time.perf_counter(), self.run.step_fn.compile_seconds

    def add(self, step: int, metrics) -> None:
        self.history.append((step, metrics))

    def complete(self, bar, upto: int) -> None:
        """Blocks until step `upto` is done, then advances the bar to it."""
        pending = [m for s, m in self.history if self.done < s <= upto]
        if not pending:
            return
        jax.block_until_ready(pending[-1])
        compiled = self.run.step_fn.compile_seconds - self.compile0
        if self.done == self.run.start and compiled > 0:
            log(f"compiled the train step in {compiled:.1f}s (not counted in examples/s)")
        bar.update(upto - self.done)
        self.done = upto

    def log(self, bar, step: int) -> dict[str, float]:
        """Fetches the window's metrics, stops on a non-finite loss, logs and returns the means."""
        self.complete(bar, upto=step)
        seconds = time.perf_counter() - self.t0 - (self.run.step_fn.compile_seconds - self.compile0)
        for s, m in self.history:
            loss = float(m["loss"])
            if not np.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss {loss} at step {s}; stopping")
        host = [jax.device_get(m) for _, m in self.history]
        tokens = sum(float(m.pop("num_tokens")) for m in host)
        out = {k: float(np.mean([float(m[k]) for m in host])) for k in host[-1]}
        n_examples = len(host) * int(self.run.config.train.batch_size)  # global batch
        out["examples_per_sec"] = n_examples / max(seconds, 1e-9)
        out["tokens_per_sec"] = tokens / max(seconds, 1e-9)
        write_scalars(self.run.writer, "train", out, step)
        bar.set_postfix(loss=f"{out['loss']:.4f}", ex_s=f"{out['examples_per_sec']:.1f}")
        acc = f" acc {out['accuracy']:.3f}" if "accuracy" in out else ""
        msg = (
            f"step {step}: loss {out['loss']:.4f}{acc} "
            f"lr {out['lr']:.2e} |g| {out['grad_norm']:.3f} "
            f"{out['examples_per_sec']:.1f} ex/s {out['tokens_per_sec']:.0f} tok/s"
        )
        if multihost.is_main():
            bar.write(msg)
        self.history = []
        self.restart()
        return out
