"""TSDAE (config.task == 'tsdae'): unsupervised domain adaptation of a sentence encoder.

Wang, Reimers and Gurevych (2021): delete 60 % of each sentence's words, embed the noisy copy with
the encoder (its pooling and normalisation: the embedding the retriever will use), and train a
BERT decoder to reconstruct the original from that one vector through cross-attention. The
decoder shares the encoder's weights (`bert_decoder.tied_params`; sentence-transformers'
`DenoisingAutoEncoderLoss(tie_encoder_decoder=True)`), so the loss shapes the encoder both ways.
The result is the encoder alone, exported as a sentence-transformers dir, to use as it is or as
`init_from` of a supervised run (adaptive pre-training).

The loop shares the bi-encoder's machinery: config validated and sentences read before anything
is written, sharded state on the mesh (`steps.create_state`), the jitted step with the state
donated, Orbax checkpoints holding the data position, SIGTERM preemption, TensorBoard on process
0, retrieval before/after on `eval.before_after_split` of `data.dev.path`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import config as config_lib
from dualenc import multihost, optim, sharding, steps, trainer
from dualenc.checkpoint import Checkpointer, PreemptionGuard
from dualenc.data.denoising import DenoisingPipeline, read_sentences
from dualenc.models import bert_decoder, convert, dual_encoder
from dualenc.models.loading import encoder_from_params, save_sentence_transformers
from dualenc.retrieval import engine as train_eval


def tsdae_loss(spec, params, batch, rng=None, deterministic: bool = True):
    """Mean next-token cross-entropy of the originals given the noisy copies' embeddings.

    params {'encoder': tower, 'decoder': bert_decoder.own_params}; batch {src_ids, src_mask,
    tgt_ids, tgt_mask}. The decoder reads tgt[:, :-1] and predicts tgt[:, 1:] ([SEP] included,
    padding ignored), as sentence-transformers does.
    """
    r_enc, r_dec = (None, None) if rng is None else jax.random.split(rng)
    emb = dual_encoder.embed(
        spec,
        params["encoder"],
        batch["src_ids"],
        batch["src_mask"],
        deterministic=deterministic,
        rngs=r_enc,
    )  # (B, H)
    dec = bert_decoder.tied_params(params["encoder"], params["decoder"])
    ids, mask = batch["tgt_ids"], batch["tgt_mask"]
    logits = bert_decoder.BertLMHeadDecoder(spec.config).apply(
        {"params": dec},
        ids[:, :-1],
        mask[:, :-1],
        emb[:, None, :],
        jnp.ones((emb.shape[0], 1), jnp.int32),
        deterministic,
        rngs=None if r_dec is None else {"dropout": r_dec},
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    weights = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_train_step(spec, tx: optax.GradientTransformation, schedule, dropout: bool):
    """The (not yet jitted) step; dropout keys are folded from the step number."""

    def train_step(state, batch, rng):
        params = state["params"]
        rng = jax.random.fold_in(rng, state["step"])
        loss, grads = jax.value_and_grad(
            lambda p: tsdae_loss(spec, p, batch, rng, deterministic=not dropout)
        )(params)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
        }
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
            "num_tokens": jnp.sum(batch["tgt_mask"]).astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


def initial_decoder(base, seed: int) -> dict:
    """The decoder's own params: random (HF's init), with the LM head of the model dir where it
    has one (`cls.predictions.*` of a BERT pretraining checkpoint, as `from_pretrained` loads)."""
    own = bert_decoder.own_params(bert_decoder.init_decoder(base.config, jax.random.key(seed)))
    own = jax.tree.map(np.asarray, own)
    if base.model_dir is None:
        return own
    from dualenc.models.loading import _read_state_dict  # noqa: PLC0415 - one private reader

    try:
        sd = _read_state_dict(Path(base.model_dir))
    except Exception:  # noqa: BLE001 - no readable weights file: the random head stays
        return own
    head = {k: v for k, v in sd.items() if k.startswith("cls.predictions.")}
    head = {k: v for k, v in head.items() if not k.startswith("cls.predictions.decoder.")}
    if not head:
        return own
    cls = convert.params_from_state_dict(
        head, {"cls": own["cls"]}, prefix="", fill_missing={"cls": own["cls"]}
    )
    trainer._log(f"tsdae: LM head from {base.model_dir} ({len(head)} tensors)")
    return {**own, "cls": cls["cls"]}


@dataclasses.dataclass
class _Run:
    config: Any
    workdir: Any
    mesh: Any
    base: Any
    pipeline: DenoisingPipeline
    ckpt: Checkpointer
    step_fn: steps.CompiledStep
    rng: jax.Array
    num_steps: int
    writer: Any = None


def _setup(config, workdir) -> tuple[_Run, dict, int]:
    mesh = steps.build_mesh(config)
    config_lib.validate(config, mesh.devices.size, jax.process_count())
    s, t = config.tsdae, config.train
    base = steps.load_base_encoder(config.model)
    if base.spec.arch != "bert":
        raise config_lib.ConfigError(
            f"task='tsdae' needs a BERT tower (its decoder is BertLMHeadModel); "
            f"model.name_or_path is a {base.spec.arch!r} model"
        )
    sentences = read_sentences(str(s.path), s.format, int(s.min_chars))
    if int(s.max_sentences) and len(sentences) > int(s.max_sentences):
        keep = np.random.default_rng(int(config.seed)).permutation(len(sentences))
        sentences = [sentences[i] for i in sorted(keep[: int(s.max_sentences)])]
    pipeline = DenoisingPipeline(
        sentences,
        base.tokenizer,
        global_batch_size=int(t.batch_size),
        max_length=int(s.max_length),
        del_ratio=float(s.del_ratio),
        seed=int(config.seed),
        source=str(s.path),
    )
    workdir = multihost.epath(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    num_steps = trainer.resolve_num_steps(config, pipeline)
    tx, schedule = optim.make_optimizer(t, num_steps)
    rules = steps.mesh_rules(config)
    ck = config.checkpoint
    ckpt = Checkpointer(workdir, keep=int(ck.keep), every_steps=int(ck.every_steps))
    params = {"encoder": base.params, "decoder": initial_decoder(base, int(s.seed_decoder))}
    if ckpt.latest_step() is not None:
        target = steps.abstract_state(params, tx, mesh, rules)
        state, data_state, start = ckpt.restore(target)
        pipeline.set_state(data_state)
        state_sh = jax.tree.map(lambda a: a.sharding, target)
    else:
        (state, state_sh), start = steps.create_state(params, tx, mesh, rules), 0
    step = make_train_step(base.spec, tx, schedule, bool(t.dropout))
    seed, impl = int(config.seed), t.rng_impl
    rng = jax.jit(lambda: jax.random.key(seed, impl=impl), out_shardings=NamedSharding(mesh, P()))()
    step_fn = steps.CompiledStep(steps.jit_train_step(step, state_sh, mesh))
    run = _Run(config, workdir, mesh, base, pipeline, ckpt, step_fn, rng, num_steps)
    trainer._log(
        f"tsdae on {len(sentences)} sentences of {s.path}: {num_steps} steps, start {start}; "
        f"mesh {dict(mesh.shape)}"
    )
    return run, state, start


def train_and_evaluate(config, workdir) -> dict:
    """Adapts `model.name_or_path` on `tsdae.path` in `workdir` (resuming from it); returns the
    metrics (also in workdir/metrics.json): loss log, retrieval before/after, export dir."""
    run, state, start = _setup(config, workdir)
    run.writer = trainer._writer(run.workdir)
    split = config.eval.before_after_split
    before_path = run.workdir / f"before_{split}.json"
    if split and config.data.dev.path and not start:
        before = _eval(run, multihost.to_host(state["params"]["encoder"]), split)
        multihost.write_on_main(trainer._write_json, before_path, before, barrier_name="before")
    with PreemptionGuard() as guard:
        state, logged, preempted = _loop(run, state, start, guard)
    final = int(state["step"])
    if final > start:
        run.ckpt.save(final, state, run.pipeline.get_state())
    run.ckpt.close()
    results: dict[str, Any] = {"step": final, "preempted": preempted, "log": logged}
    results["compile_seconds"] = run.step_fn.compile_seconds
    if preempted:
        trainer._log(f"preempted: checkpoint at step {final} saved; rerun to resume")
        return results
    tower = multihost.to_host(state["params"]["encoder"])
    if split and config.data.dev.path:
        results[f"after/{split}"] = _eval(run, tower, split)
        if before_path.exists():
            results[f"before/{split}"] = json.loads(before_path.read_text())
            trainer._log(
                train_eval.format_before_after(
                    results[f"before/{split}"], results[f"after/{split}"], split
                )
            )
    if config.export.enabled:
        out = Path(str(run.workdir / "export"))
        multihost.write_on_main(
            save_sentence_transformers,
            encoder_from_params(run.base, tower),
            out,
            barrier_name="export",
        )
        results["export_dir"] = str(out)
        trainer._log(f"exported the adapted encoder (sentence-transformers) to {out}")
    if run.writer is not None:
        run.writer.close()
    multihost.write_on_main(
        trainer._write_json, run.workdir / "metrics.json", results, barrier_name="end"
    )
    return results


def _eval(run: _Run, tower, split: str) -> dict[str, float]:
    e = run.config.eval
    ds = train_eval.load_split(run.config.data.dev.path, split, int(e.max_queries))
    enc = encoder_from_params(run.base, tower)
    return train_eval.evaluate_retrieval(
        enc,
        enc,
        ds,
        k_values=tuple(e.k_values),
        batch_size=int(e.batch_size),
        max_length=int(e.max_length) or None,
    )


def _loop(run: _Run, state, start: int, guard):
    log_every = int(run.config.log.every_steps)
    logged, window, t0 = [], [], time.perf_counter()
    step, preempted = start, False
    while step < run.num_steps:
        batch = sharding.shard_batch(next(run.pipeline), run.mesh)
        compiled0 = run.step_fn.compile_seconds
        state, metrics = run.step_fn(state, batch, run.rng)
        t0 += run.step_fn.compile_seconds - compiled0
        step += 1
        window.append(metrics)
        if step % log_every == 0 or step == run.num_steps:
            logged.append({"step": step, **_log_window(run, window, step, t0)})
            window, t0 = [], time.perf_counter()
        if guard.should_stop():
            preempted = True
            break
        if run.ckpt.should_save(step) and step != run.num_steps:
            run.ckpt.save(step, state, run.pipeline.get_state())
    return state, logged, preempted


def _log_window(run: _Run, window: list, step: int, t0: float) -> dict:
    host = [jax.device_get(m) for m in window]
    for m in host:
        if not np.isfinite(float(m["loss"])):
            raise trainer.NonFiniteLossError(f"non-finite loss {float(m['loss'])} at step {step}")
    seconds = max(time.perf_counter() - t0, 1e-9)
    tokens = sum(float(m.pop("num_tokens")) for m in host)
    out = {k: float(np.mean([float(m[k]) for m in host])) for k in host[-1]}
    out["sentences_per_sec"] = len(host) * int(run.config.train.batch_size) / seconds
    out["target_tokens_per_sec"] = tokens / seconds
    trainer._write_scalars(run.writer, "train", out, step)
    trainer._log(
        f"step {step}/{run.num_steps}: loss {out['loss']:.4f} grad_norm {out['grad_norm']:.3f} "
        f"lr {out['lr']:.2e} ({out['sentences_per_sec']:.1f} sentences/s)"
    )
    return out
