"""The train loop: set-up, checkpoints, preemption, logging, eval hooks and export.

`train_and_evaluate(config, workdir)` is what `dualenc.train` and the tests call. The config is
validated before anything is loaded. Every process runs the same loop on its slice of the global
batch; only process 0 writes `export/`, `metrics.json`, `before_*.json` and TensorBoard (the
others wait at a barrier), parameters are gathered to every host before eval and export, and the
preemption check agrees across hosts so that all of them save the same step.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from dualenc import config as config_lib
from dualenc import io, losses, multihost, optim, sharding, steps, tokenization
from dualenc.checkpoint import Checkpointer, PreemptionGuard
from dualenc.data import mining
from dualenc.data.pipeline import TrainPipeline
from dualenc.models import dual_encoder
from dualenc.models.loading import Encoder, load_encoder, save_sentence_transformers
from dualenc.retrieval import engine as train_eval


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the first bad step."""


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything the loop needs besides the (donated, so ever-changing) train state."""

    config: Any
    workdir: epath.Path
    mesh: Mesh
    base: Encoder  # tokenizer, spec, export recipe (its params are not the trained ones)
    pipeline: TrainPipeline
    num_steps: int
    start: int  # the step the run starts from (0, or the restored checkpoint's)
    ckpt: Checkpointer
    step_fn: steps.CompiledStep
    rng: jax.Array
    writer: Any  # TensorBoard SummaryWriter on process 0, else None


# ----------------------------------------------------------------------------- set-up


def use_packing(config, arch: str, process_count: int) -> bool:
    """`data.packing` where this run allows it: one process (hosts would have to agree on the
    packed row count), no GradCache or accumulation (they slice padded rows), BERT / DistilBERT
    towers (DeBERTa's relative positions would cross segments); padded batches otherwise, said
    once in the log. Packed and padded give the same loss and gradients (tests/packing_test.py)."""
    if not config.data.get("packing", False):
        return False
    t = config.train
    why = [
        *(["several processes"] if process_count > 1 else []),
        *(["train.cache_chunk_size > 0"] if int(t.cache_chunk_size) > 0 else []),
        *(["train.grad_accum_steps > 1"] if int(t.grad_accum_steps) > 1 else []),
        *([f"a {arch} model"] if arch not in dual_encoder.PACKABLE_ARCHS else []),
    ]
    if why:
        _log(f"data.packing: padded batches instead ({', '.join(why)})")
    return not why


def make_pipeline(config, tokenizer, packing: bool | None = None) -> TrainPipeline:
    """The TrainPipeline over `data.train` (global batch `train.batch_size`); for BEIR training
    data, hard negatives are mined per `data.mine_negatives` (`mining.config_negatives`). Rows are
    packed when `packing` (default: `data.packing` as set; `setup` passes `use_packing`)."""
    d = config.data
    examples = None
    if d.train.format == "beir" and d.mine_negatives:
        examples = mining.config_examples(d)
    return TrainPipeline(
        examples,
        tokenizer,
        path=d.train.path,
        format=d.train.format,
        split=d.train.split,
        global_batch_size=int(config.train.batch_size),
        num_negatives=int(d.num_negatives),
        q_max_length=int(d.q_max_length),
        p_max_length=int(d.p_max_length),
        seed=int(config.seed),
        pad_multiple=max(int(d.q_max_length), int(d.p_max_length)) if d.pad_to_max_length else None,
        buckets=tuple(int(b) for b in d.get("buckets", ())) or tokenization.TRAIN_BUCKETS,
        packing=bool(d.get("packing", False)) if packing is None else packing,
        pack_max_segments=int(d.get("pack_max_segments", 16)),
    )


def resolve_num_steps(config, pipeline) -> int:
    """`train.num_steps`, or `train.num_epochs` × batches per epoch when num_steps ≤ 0."""
    t = config.train
    if int(t.num_steps) > 0:
        return int(t.num_steps)
    return max(1, int(round(float(t.num_epochs) * max(1, pipeline.steps_per_epoch))))


def initial_params(config, base) -> tuple[dict, str]:
    """(params, source) for a fresh run: `config.init_from` (a workdir or model dir), else the
    base encoder's (pretrained or random) weights."""
    shared = bool(config.model.shared_towers)
    init_from = config.get("init_from") or ""
    if not init_from:
        return steps.init_dual_params(base, shared), base.source
    if (multihost.epath(init_from) / "checkpoints").is_dir():
        ck = Checkpointer(init_from, async_save=False)
        step = ck.latest_step()
        state, _, _ = ck.restore(None, step)
        got = multihost.to_host(state["params"])
        want = steps.init_dual_params(base, shared)
        if jax.tree.structure(got) != jax.tree.structure(want):
            raise ValueError(f"init_from {init_from}: params tree does not match the model")
        ck.close()
        return got, f"{init_from} (step {step})"
    enc = load_encoder(init_from, dtype=config.model.dtype)
    return steps.init_dual_params(enc, shared), init_from


def setup(config, workdir) -> tuple[Run, dict]:
    """(Run, train state): validates the config, then builds the mesh, encoder, data, optimizer
    and state (restored from the workdir's checkpoint if any; then the pretrained weights are
    never read) and the ahead-of-time compiled step."""
    mesh = steps.build_mesh(config)
    config_lib.validate(config, mesh.devices.size, jax.process_count())
    workdir = multihost.epath(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ck = config.checkpoint
    ckpt = Checkpointer(workdir, keep=int(ck.keep), every_steps=int(ck.every_steps))
    resumed = ckpt.latest_step() is not None
    base = steps.load_base_encoder(config.model, weights=not resumed)
    packed = use_packing(config, base.spec.arch, jax.process_count())
    pipeline = make_pipeline(config, base.tokenizer, packed)
    if config.loss.name in losses.DISTILLATION and not pipeline.data.has_scores:
        raise config_lib.ConfigError(
            f"loss.name={config.loss.name!r} distils teacher scores, but data.train.path="
            f"{config.data.train.path!r} carries none (write them with dualenc.mine, or choose "
            "loss.name='contrastive')"
        )
    num_steps = resolve_num_steps(config, pipeline)
    tx, schedule = optim.make_optimizer(config.train, num_steps)
    rules, shared = steps.mesh_rules(config), bool(config.model.shared_towers)
    if resumed:
        target = steps.abstract_state(steps.init_dual_params(base, shared), tx, mesh, rules)
        state, data_state, start = ckpt.restore(target)
        pipeline.set_state(data_state)
        state_sh, source = jax.tree.map(lambda x: x.sharding, target), f"checkpoint {start}"
    else:
        params, source = initial_params(config, base)
        (state, state_sh), start = steps.create_state(params, tx, mesh, rules), 0
    step = steps.make_train_step(config, base.spec, tx, schedule)
    seed, impl = int(config.seed), config.train.rng_impl  # made under jit: global on every host
    rng = jax.jit(lambda: jax.random.key(seed, impl=impl), out_shardings=NamedSharding(mesh, P()))()
    run = Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        base=base,
        pipeline=pipeline,
        num_steps=num_steps,
        start=start,
        ckpt=ckpt,
        step_fn=steps.CompiledStep(steps.jit_train_step(step, state_sh, mesh)),
        rng=rng,
        writer=_writer(workdir),
    )
    _log(
        f"model {config.model.name_or_path} from {source}; {num_steps} steps, start {start}; "
        f"mesh {dict(mesh.shape)} over {jax.process_count()} process(es)"
    )
    return run, state


def _writer(workdir: epath.Path):
    if not multihost.is_main():
        return None
    from tensorboardX import SummaryWriter  # noqa: PLC0415 - process 0 only

    return SummaryWriter(str(workdir / "tensorboard"))


# ----------------------------------------------------------------------------- train + evaluate


def train_and_evaluate(config, workdir) -> dict:
    """Trains per `config`, checkpointing into `workdir` (resuming from it), evaluates and
    exports; returns the final metrics (also written to workdir/metrics.json by process 0)."""
    if config.get("task", "biencoder") == "cross":  # cross-encoders: their own loop
        from dualenc import cross_trainer  # noqa: PLC0415 - cross_trainer imports this module

        return cross_trainer.train_and_evaluate(config, workdir)
    if config.get("task", "biencoder") == "tsdae":  # unsupervised adaptation: its own loop
        from dualenc import tsdae  # noqa: PLC0415 - tsdae imports this module

        return tsdae.train_and_evaluate(config, workdir)
    run, state = setup(config, workdir)
    results: dict[str, Any] = {}
    split = config.eval.before_after_split
    before_path = run.workdir / f"before_{split}.json"
    if split and not run.start:
        before = _eval_split(run, multihost.to_host(state["params"]), split)
        multihost.write_on_main(_write_json, before_path, before, barrier_name="before")
    with PreemptionGuard() as guard:
        state, last, logged, preempted = _loop(run, state, guard)
    step = int(state["step"])
    if step > run.start:
        run.ckpt.save(step, state, run.pipeline.get_state())
    run.ckpt.close()  # waits for the async saves to be finalised
    results.update({"step": step, "preempted": preempted, "log": logged})
    results.update({f"train/{k}": v for k, v in last.items()})
    results["compile_seconds"] = run.step_fn.compile_seconds
    if preempted:
        _log(f"preempted: checkpoint at step {step} saved; rerun with the same workdir to resume")
        if run.writer is not None:
            run.writer.close()
        return results
    params = multihost.to_host(state["params"])  # gathered once for eval and export
    results.update(_final_eval(run, params, before_path))
    if config.export.enabled:
        results["export_dir"] = str(run.workdir / "export")
        multihost.write_on_main(_export, run, params, barrier_name="export")
        _log(f"exported sentence-transformers model to {results['export_dir']}")
    if run.writer is not None:
        run.writer.close()
    multihost.write_on_main(_write_json, run.workdir / "metrics.json", results, barrier_name="end")
    return results


def _eval_split(run: Run, host_params, split: str) -> dict[str, float]:
    """Retrieval metrics on a BEIR split of `data.dev.path` (every process calls it)."""
    e = run.config.eval
    ds = train_eval.load_split(run.config.data.dev.path, split, int(e.max_queries))
    q_enc, p_enc = steps.tower_encoders(run.base, host_params)
    return train_eval.evaluate_retrieval(
        q_enc,
        p_enc,
        ds,
        k_values=tuple(e.k_values),
        batch_size=int(e.batch_size),
        max_length=int(e.max_length) or None,
    )


def _final_eval(run: Run, host_params, before_path: epath.Path) -> dict:
    """Dev retrieval metrics, and the before/after table on `eval.before_after_split`."""
    c, out, step = run.config, {}, int(run.num_steps)
    dev_split, split = c.data.dev.split, c.eval.before_after_split
    if c.data.dev.path and int(c.eval.every_steps) >= 0:
        out["dev"] = _eval_split(run, host_params, dev_split)
        _write_scalars(run.writer, "dev", out["dev"], step)
    if split:
        after = out["dev"] if split == dev_split and "dev" in out else None
        out[f"after/{split}"] = after or _eval_split(run, host_params, split)
        if before_path.exists():
            out[f"before/{split}"] = json.loads(before_path.read_text())
            _log(
                train_eval.format_before_after(out[f"before/{split}"], out[f"after/{split}"], split)
            )
    return out


def _export(run: Run, host_params) -> None:
    """sentence-transformers dir(s) at workdir/export (query/ + passage/ for separate towers);
    a `gs://` workdir gets a local export copied up."""
    out = run.workdir / "export"
    if multihost.is_local(out):
        _save_towers(run.base, host_params, Path(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        _save_towers(run.base, host_params, Path(tmp) / "export")
        for f in sorted((Path(tmp) / "export").rglob("*")):
            if f.is_file():
                dst = out / str(f.relative_to(Path(tmp) / "export"))
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())


def _save_towers(base: Encoder, host_params, out: Path) -> None:
    q_enc, p_enc = steps.tower_encoders(base, host_params)
    if q_enc is p_enc:
        save_sentence_transformers(p_enc, out)
    else:
        save_sentence_transformers(q_enc, out / "query")
        save_sentence_transformers(p_enc, out / "passage")


def _write_json(path: epath.Path, obj) -> None:
    if multihost.is_local(path):
        io.write_json(Path(path), obj)
    else:
        path.write_text(json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------- the loop


def _loop(run: Run, state: dict, guard) -> tuple[dict, dict, list, bool]:
    """Runs steps run.start+1..run.num_steps; returns (state, last logged metrics, the log,
    preempted). One step stays in flight: the bar and examples/s count a step once its results
    are ready, and compile time is kept out of the rates."""
    c = run.config
    log_every, eval_every = int(c.log.every_steps), int(c.eval.every_steps)
    bar = tqdm(
        total=run.num_steps,
        initial=run.start,
        desc="train",
        dynamic_ncols=True,
        disable=not multihost.is_main(),
    )
    window, logged, last = _Window(run), [], {}
    step, preempted = run.start, False
    while step < run.num_steps:
        batch = sharding.shard_batch(next(run.pipeline), run.mesh)
        state, metrics = run.step_fn(state, batch, run.rng)
        step += 1
        window.add(step, metrics)
        window.complete(bar, upto=step - 1)  # the previous step; this one keeps running
        if step % log_every == 0 or step == run.num_steps:
            last = window.log(bar, step)
            logged.append({"step": step, **last})
        if eval_every > 0 and step % eval_every == 0 and step < run.num_steps:
            window.complete(bar, upto=step)
            dev = _eval_split(run, multihost.to_host(state["params"]), c.data.dev.split)
            _write_scalars(run.writer, "dev", dev, step)
            window.restart()
        if guard.should_stop():  # same answer on every process: all save this step
            preempted = True
            break
        if run.ckpt.should_save(step) and step < run.num_steps:
            run.ckpt.save(step, state, run.pipeline.get_state())
    if window.history:
        last = window.log(bar, step)
    bar.close()
    return state, last, logged, preempted


class _Window:
    """Step metrics since the last log line, and the wall time of the steps known complete."""

    def __init__(self, run: Run):
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
            _log(f"compiled the train step in {compiled:.1f}s (not counted in examples/s)")
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
        _write_scalars(self.run.writer, "train", out, step)
        bar.set_postfix(loss=f"{out['loss']:.4f}", ex_s=f"{out['examples_per_sec']:.1f}")
        msg = (
            f"step {step}: loss {out['loss']:.4f} acc {out.get('accuracy', 0):.3f} "
            f"lr {out['lr']:.2e} |g| {out['grad_norm']:.3f} "
            f"{out['examples_per_sec']:.1f} ex/s {out['tokens_per_sec']:.0f} tok/s"
        )
        if multihost.is_main():
            bar.write(msg)
        self.history = []
        self.restart()
        return out


def _write_scalars(writer, prefix: str, scalars: dict, step: int) -> None:
    if writer is None:
        return
    for k, v in scalars.items():
        writer.add_scalar(f"{prefix}/{k}", float(v), step)
    writer.flush()


def _log(msg: str) -> None:
    logging.info(msg)
    if multihost.is_main():
        print(msg, flush=True)
