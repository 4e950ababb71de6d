"""Dual-encoder training: model set-up, the pure jitted train step, and the train loop.

`train_and_evaluate(config, workdir)` is what `dualenc.train` and the tests call. The step is
`train_step(state, batch, rng) -> (state, metrics)` with state = {step, params, opt_state},
jitted with explicit shardings and the state donated. The loss is written over the global batch
(in-batch + hard negatives); jit and the batch sharding make the negatives cross-device.
Gradient accumulation (micro-batches, each with its own in-batch negatives) and GradCache
(full-batch negatives, embeddings computed in chunks) are both inside the step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dualenc import optim

# ----------------------------------------------------------------------------- model set-up


def load_base_encoder(mcfg):
    """The Encoder of `model.name_or_path` (weights, tokenizer, pooling) with the config's dtype,
    remat, pooling and normalize applied; random weights if `model.init_random` (architecture
    fields changed by `model.config_overrides`)."""
    if mcfg.init_random:
        return _random_encoder(mcfg)
    if len(mcfg.config_overrides):
        raise ValueError("model.config_overrides changes the architecture: set model.init_random")
    enc = _load_pretrained(
        str(mcfg.name_or_path), mcfg.dtype, mcfg.pooling or None, bool(mcfg.normalize)
    )
    cfg = dataclasses.replace(enc.config, dtype=mcfg.dtype, remat=bool(mcfg.remat))
    return dataclasses.replace(enc, config=cfg, spec=dataclasses.replace(enc.spec, config=cfg))


@functools.lru_cache(maxsize=4)
def _load_pretrained(path: str, dtype: str, pooling, normalize: bool):
    """Cached: tests and the benchmark build several trainers from one model dir."""
    from dualenc.models import loading

    return loading.load_encoder(path, dtype=dtype, pooling=pooling, normalize=normalize)


def _random_encoder(mcfg):
    """An Encoder with random weights of `name_or_path`'s architecture (config.json there, with
    `config_overrides`) and its tokenizer; the pretrained weights are never read."""
    import json
    from pathlib import Path

    from dualenc.models.dual_encoder import EncoderSpec
    from dualenc.models.loading import Encoder
    from dualenc.models.registry import get_arch
    from dualenc.tokenization import load_tokenizer

    root = Path(mcfg.name_or_path)
    if not (root / "config.json").is_file():
        raise ValueError(f"model.init_random needs a local model dir with config.json: {root}")
    hf = json.loads((root / "config.json").read_text())
    arch = get_arch(hf["model_type"])
    overrides = dict(mcfg.config_overrides)
    cfg = arch.config_cls.from_hf(hf)
    bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
    if bad:
        raise ValueError(f"model.config_overrides: unknown fields {bad} of {type(cfg).__name__}")
    cfg = dataclasses.replace(cfg, dtype=mcfg.dtype, remat=bool(mcfg.remat), **overrides)
    spec = EncoderSpec(
        arch=hf["model_type"],
        config=cfg,
        pooling=mcfg.pooling or "mean",
        normalize=bool(mcfg.normalize),
    )
    return Encoder(
        arch=spec.arch,
        config=cfg,
        params=random_tower_params(spec, mcfg.init_seed),
        tokenizer=load_tokenizer(root),
        pooling=spec.pooling,
        normalize=spec.normalize,
        max_length=int(cfg.max_position_embeddings),
        source="random init",
        spec=spec,
        model_dir=root,
    )


def random_tower_params(spec, seed: int):
    """Freshly initialised tower params for `spec` (tiny test models, training from scratch)."""
    from dualenc.models.dual_encoder import init_tower

    return jax.tree.map(np.asarray, init_tower(spec, jax.random.key(seed)))


def init_dual_params(base, shared: bool) -> dict:
    """DualEncoder params: {'encoder': tower} (tied) or {'q_encoder', 'p_encoder'} (two copies)."""
    from dualenc.models import dual_encoder

    params = dual_encoder.init_dual_params(base.spec, None, shared, tower_params=base.params)
    return jax.tree.map(np.array, params)  # host copies: the train state is donated


def tower_encoders(base, params) -> tuple[Any, Any]:
    """(query Encoder, passage Encoder) holding the current params (host copies)."""
    from dualenc.models.loading import encoder_from_params

    host = jax.tree.map(np.asarray, jax.device_get(params))
    if "encoder" in host:
        enc = encoder_from_params(base, host["encoder"])
        return enc, enc
    return encoder_from_params(base, host["q_encoder"]), encoder_from_params(
        base, host["p_encoder"]
    )


# ----------------------------------------------------------------------------- loss


def make_loss_fn(lcfg):
    """(q (B,D), p (B,1+k,D), p_ids (B,1+k)) -> (loss, metrics) for `loss.name`."""
    from dualenc import losses

    if lcfg.name == "contrastive":
        return functools.partial(
            losses.contrastive_loss,
            scale=float(lcfg.scale),
            symmetric=bool(lcfg.symmetric),
            mask_duplicates=bool(lcfg.mask_duplicates),
        )
    if lcfg.name == "adaptive_margin":
        fn = losses.adaptive_margin_loss

        def adaptive(q, p, p_ids):
            del p_ids
            return fn(q, p, err=lcfg.get("margin_err", "squared"))

        return adaptive
    raise ValueError(f"loss.name must be 'contrastive' or 'adaptive_margin', got {lcfg.name!r}")


def _embed_fns(spec, dropout: bool):
    """embed_q(params, ids, mask, rng), embed_p(...) -> (..., D)."""
    from dualenc.models import dual_encoder as de

    def mk(fn):
        def embed(params, ids, mask, rng):
            rngs = {"dropout": rng} if dropout else None
            return fn(spec, params, ids, mask, deterministic=not dropout, rngs=rngs)

        return embed

    return mk(de.embed_queries), mk(de.embed_passages)


# ----------------------------------------------------------------------------- gradients


def _plain_grads(embed_q, embed_p, loss_fn, params, batch, rng):
    """(loss, metrics, grads) with one forward/backward over the whole (micro-)batch."""
    rq, rp = jax.random.split(rng)

    def f(prm):
        q = embed_q(prm, batch["q_input_ids"], batch["q_attention_mask"], rq)  # (B, D)
        p = embed_p(prm, batch["p_input_ids"], batch["p_attention_mask"], rp)  # (B, 1+k, D)
        return loss_fn(q, p, batch["p_ids"])

    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, grads


def _chunked(x, chunk: int):
    """(N, ...) -> (N/chunk, chunk, ...), chunk j = rows {j, j + N/chunk, ...} (strided, so each
    chunk keeps the batch's device layout)."""
    n = x.shape[0]
    if n % chunk:
        raise ValueError(f"cache_chunk_size {chunk} must divide {n} (rows in the batch)")
    return jnp.swapaxes(x.reshape(chunk, n // chunk, *x.shape[1:]), 0, 1)


def _unchunked(x):
    """Inverse of `_chunked`: (N/chunk, chunk, ...) -> (N, ...)."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def _cache_grads(embed_q, embed_p, loss_fn, params, batch, rng, chunk: int):
    """GradCache: embed without grad in chunks, grads of the loss w.r.t. the embeddings, then
    re-embed each chunk under vjp to accumulate parameter grads. Equal to `_plain_grads` when
    dropout is off (with dropout, masks are drawn per chunk, identically in both passes)."""
    rq, rp = jax.random.split(rng)
    b, k1 = batch["p_ids"].shape
    lp = batch["p_input_ids"].shape[-1]
    q_ids, q_mask = (
        _chunked(batch["q_input_ids"], chunk),
        _chunked(batch["q_attention_mask"], chunk),
    )
    p_ids = _chunked(batch["p_input_ids"].reshape(b * k1, lp), chunk)
    p_mask = _chunked(batch["p_attention_mask"].reshape(b * k1, lp), chunk)

    def embed_all(embed, ids, mask, r):
        n = ids.shape[0]
        out = jax.lax.map(
            lambda a: embed(params, a[0], a[1], jax.random.fold_in(r, a[2])),
            (ids, mask, jnp.arange(n)),
        )
        return jax.lax.stop_gradient(_unchunked(out))

    q = embed_all(embed_q, q_ids, q_mask, rq)  # (B, D)
    p = embed_all(embed_p, p_ids, p_mask, rp).reshape(b, k1, -1)  # (B, 1+k, D)
    (loss, metrics), (gq, gp) = jax.value_and_grad(
        lambda q_, p_: loss_fn(q_, p_, batch["p_ids"]), argnums=(0, 1), has_aux=True
    )(q, p)
    gq, gp = _chunked(gq, chunk), _chunked(gp.reshape(b * k1, -1), chunk)

    def accumulate(embed, ids, mask, g, r, acc):
        def body(acc, a):
            i, m, gc, idx = a
            _, vjp = jax.vjp(lambda prm: embed(prm, i, m, jax.random.fold_in(r, idx)), params)
            return jax.tree.map(jnp.add, acc, vjp(gc)[0]), None

        acc, _ = jax.lax.scan(body, acc, (ids, mask, g, jnp.arange(ids.shape[0])))
        return acc

    grads = jax.tree.map(jnp.zeros_like, params)
    grads = accumulate(embed_q, q_ids, q_mask, gq, rq, grads)
    grads = accumulate(embed_p, p_ids, p_mask, gp, rp, grads)
    return loss, metrics, grads


def make_train_step(config, spec, tx: optax.GradientTransformation, schedule):
    """The pure step `(state, batch, rng) -> (state, metrics)` (not yet jitted)."""
    tcfg = config.train
    embed_q, embed_p = _embed_fns(spec, bool(tcfg.dropout))
    loss_fn = make_loss_fn(config.loss)
    accum, chunk = int(tcfg.grad_accum_steps), int(tcfg.cache_chunk_size)

    def grads_fn(params, batch, rng):
        if chunk > 0:
            return _cache_grads(embed_q, embed_p, loss_fn, params, batch, rng, chunk)
        return _plain_grads(embed_q, embed_p, loss_fn, params, batch, rng)

    def train_step(state, batch, rng):
        params = state["params"]
        rng = jax.random.fold_in(rng, state["step"])
        if accum <= 1:
            loss, metrics, grads = grads_fn(params, batch, rng)
        else:
            micro = jax.tree.map(lambda x: _chunked(x, x.shape[0] // accum), batch)  # [i] = x[i::A]

            def body(acc, a):
                mb, i = a
                loss, metrics, g = grads_fn(params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, acc, (loss, metrics, g)), None

            zero = jax.eval_shape(grads_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            tot, _ = jax.lax.scan(body, zero, (micro, jnp.arange(accum)))
            loss, metrics, grads = jax.tree.map(lambda x: x / accum, tot)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
        }
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
        }
        return new_state, metrics

    return train_step


# ----------------------------------------------------------------------------- state + jit


def create_state(params, tx, mesh, rules) -> tuple[dict, Any]:
    """(state on the mesh, state shardings): params placed by the partition rules, the optimizer
    state initialised under jit so it inherits the params' shardings."""
    from jax.sharding import NamedSharding, PartitionSpec

    from dualenc import sharding

    p_sh = sharding.param_shardings(params, rules, mesh)
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, p_sh)
    opt_state = jax.jit(tx.init)(params)
    rep = NamedSharding(mesh, PartitionSpec())
    state = {
        "step": jax.device_put(jnp.zeros((), jnp.int32), rep),
        "params": params,
        "opt_state": opt_state,
    }
    state = jax.tree.map(
        lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, rep), state
    )
    return state, jax.tree.map(lambda x: x.sharding, state)


def jit_train_step(step_fn, state_shardings, mesh):
    """jit with explicit in/out shardings; the state (argument 0) is donated."""
    from jax.sharding import NamedSharding, PartitionSpec

    from dualenc import sharding

    rep = NamedSharding(mesh, PartitionSpec())
    b_sh = sharding.batch_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, b_sh, rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )


def build_mesh(config):
    from dualenc import sharding

    return sharding.make_mesh(tuple(config.mesh.shape))


def mesh_rules(config) -> list:
    return [tuple(r) for r in config.mesh.rules]


# ----------------------------------------------------------------------------- data


def make_pipeline(config, tokenizer):
    """The TrainPipeline over `data.train` (global batch `train.batch_size`); for BEIR training
    data, hard negatives are mined with BM25 when `data.mine_negatives == 'bm25'`."""
    from dualenc.data.pipeline import TrainPipeline

    d = config.data
    examples = None
    if d.train.format == "beir" and d.mine_negatives:
        examples = beir_examples_with_negatives(d)
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
    )


def beir_examples_with_negatives(d):
    """TrainExamples of a BEIR split whose negatives are BM25's top `mine_depth` docs after
    skipping `mine_skip` (judged-relevant docs are never negatives)."""
    from dualenc.data.beir import load_beir
    from dualenc.data.examples import passage_text
    from dualenc.data.st_format import examples_from_beir
    from dualenc.index.bm25 import BM25Index

    if d.mine_negatives != "bm25":
        raise ValueError(f"data.mine_negatives must be '' or 'bm25', got {d.mine_negatives!r}")
    ds = load_beir(d.train.path, d.train.split)
    doc_ids = list(ds.corpus)
    index = BM25Index.build([passage_text(ds.corpus[i].title, ds.corpus[i].text) for i in doc_ids])
    qids = [q for q in ds.qrels if q in ds.queries]
    depth, skip = int(d.mine_depth), int(d.mine_skip)
    _, rows = index.search_texts([ds.queries[q] for q in qids], depth + skip + 10)
    negatives = {}
    for q, r in zip(qids, rows, strict=True):
        cand = [doc_ids[i] for i in r if i >= 0 and ds.qrels[q].get(doc_ids[i], 0) <= 0]
        negatives[q] = cand[skip : skip + depth]
    return examples_from_beir(ds, negatives)


def resolve_num_steps(config, pipeline) -> int:
    """`train.num_steps`, or `train.num_epochs` × batches per epoch when num_steps ≤ 0."""
    t = config.train
    if int(t.num_steps) > 0:
        return int(t.num_steps)
    if float(t.num_epochs) <= 0:
        raise ValueError("set train.num_steps or train.num_epochs to a positive value")
    per_epoch = max(1, pipeline.num_examples // int(t.batch_size))
    return max(1, int(round(float(t.num_epochs) * per_epoch)))


# ----------------------------------------------------------------------------- loop helpers


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the first bad step."""


def _check_finite(history: list[tuple[int, dict]]) -> None:
    for step, m in history:
        loss = float(m["loss"])
        if not np.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss {loss} at step {step}; stopping")


def _summarise(history, seconds: float, n_examples: int, n_tokens: int) -> dict[str, float]:
    out = {}
    for key in history[-1][1]:
        out[key] = float(np.mean([float(m[key]) for _, m in history]))
    out["examples_per_sec"] = n_examples / max(seconds, 1e-9)
    out["tokens_per_sec"] = n_tokens / max(seconds, 1e-9)
    return out


def _write_scalars(writer, prefix: str, scalars: dict, step: int) -> None:
    if writer is None:
        return
    for k, v in scalars.items():
        writer.add_scalar(f"{prefix}/{k}", float(v), step)
    writer.flush()


def initial_params(config, base):
    """Params for a fresh run: `config.init_from` (a workdir or model dir), else the base
    encoder's (pretrained or random) weights."""
    from pathlib import Path

    shared = bool(config.model.shared_towers)
    init_from = config.get("init_from") or ""
    if not init_from:
        return init_dual_params(base, shared), base.source if base else "scratch"
    from dualenc.checkpoint import Checkpointer

    if (Path(init_from) / "checkpoints").is_dir():
        params = init_dual_params(base, shared)
        ck = Checkpointer(init_from, async_save=False)
        step = ck.latest_step()
        import orbax.checkpoint as ocp

        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        raw = ck.manager.restore(step, args=args)
        got = jax.tree.map(np.asarray, raw["state"]["params"])
        if jax.tree.structure(got) != jax.tree.structure(params):
            raise ValueError(f"init_from {init_from}: params tree does not match the model")
        return got, f"{init_from} (step {step})"
    from dualenc.models.loading import load_encoder

    enc = load_encoder(init_from, dtype=config.model.dtype)
    return init_dual_params(enc, shared), init_from


def _eval_split(config, base, params, split: str) -> dict[str, float]:
    from dualenc import train_eval

    e = config.eval
    ds = train_eval.load_split(config.data.dev.path, split, int(e.max_queries))
    q_enc, p_enc = tower_encoders(base, params)
    return train_eval.evaluate_retrieval(
        q_enc,
        p_enc,
        ds,
        k_values=tuple(e.k_values),
        batch_size=int(e.batch_size),
        max_length=int(e.max_length) or None,
    )


def _export(config, base, params, workdir) -> str:
    from pathlib import Path

    from dualenc.models.loading import save_sentence_transformers

    q_enc, p_enc = tower_encoders(base, params)
    out = Path(workdir) / "export"
    if q_enc is p_enc:
        save_sentence_transformers(p_enc, out)
    else:
        save_sentence_transformers(q_enc, out / "query")
        save_sentence_transformers(p_enc, out / "passage")
    return str(out)


# ----------------------------------------------------------------------------- train loop


def train_and_evaluate(config, workdir) -> dict:
    """Trains per `config`, checkpointing into `workdir` (resuming from it), evaluates and
    exports; returns the final metrics (also written to workdir/metrics.json)."""
    from dualenc.checkpoint import PreemptionGuard
    from dualenc.io import write_json

    rt = _setup(config, workdir)
    results: dict[str, Any] = {}
    split = config.eval.before_after_split
    before_path = rt.workdir / f"before_{split}.json"
    if split and not rt.start:
        write_json(before_path, _eval_split(config, rt.base, rt.state["params"], split))
    with PreemptionGuard() as guard:
        last, logged, preempted = _loop(config, rt, guard)
    step = int(rt.state["step"])
    if step > rt.start:
        rt.ckpt.save(step, rt.state, rt.pipeline.get_state())
    rt.ckpt.close()  # waits for the async saves to be finalised
    results.update({"step": step, "preempted": preempted, "log": logged})
    results.update({f"train/{k}": v for k, v in last.items()})
    if preempted:
        _log(f"preempted: checkpoint at step {step} saved; rerun with the same workdir to resume")
        return results
    results.update(_final_eval(config, rt, before_path))
    if config.export.enabled:
        results["export_dir"] = _export(config, rt.base, rt.state["params"], rt.workdir)
        _log(f"exported sentence-transformers model to {results['export_dir']}")
    if rt.writer is not None:
        rt.writer.close()
    write_json(rt.workdir / "metrics.json", results)
    return results


def _setup(config, workdir):
    """Mesh, encoder, data, optimizer, state (restored from the workdir if it has a checkpoint)
    and the jitted step, as one namespace."""
    from pathlib import Path
    from types import SimpleNamespace

    from dualenc.checkpoint import Checkpointer, abstract_like

    rt = SimpleNamespace(workdir=Path(workdir), mesh=build_mesh(config))
    rt.workdir.mkdir(parents=True, exist_ok=True)
    rt.base = load_base_encoder(config.model)
    rt.pipeline = make_pipeline(config, rt.base.tokenizer)
    rt.num_steps = resolve_num_steps(config, rt.pipeline)
    tx, schedule = optim.make_optimizer(config.train, rt.num_steps)
    ck = config.checkpoint
    rt.ckpt = Checkpointer(rt.workdir, keep=int(ck.keep), every_steps=int(ck.every_steps))
    resumed = rt.ckpt.latest_step() is not None
    if resumed:  # placeholder values: only the structure and shardings are used
        params, source = init_dual_params(rt.base, bool(config.model.shared_towers)), "checkpoint"
    else:
        params, source = initial_params(config, rt.base)
    rt.state, state_sh = create_state(params, tx, rt.mesh, mesh_rules(config))
    rt.start = 0
    if resumed:
        rt.state, data_state, rt.start = rt.ckpt.restore(abstract_like(rt.state))
        rt.pipeline.set_state(data_state)
    _log(
        f"model {config.model.name_or_path} from {source}; {rt.num_steps} steps, "
        f"start {rt.start}; mesh {dict(rt.mesh.shape)}"
    )
    step = make_train_step(config, rt.base.spec, tx, schedule)
    rt.step_fn = jit_train_step(step, state_sh, rt.mesh)
    rt.writer = _writer(rt.workdir)
    return rt


def _final_eval(config, rt, before_path) -> dict:
    """Dev retrieval metrics, and the before/after table on `eval.before_after_split`."""
    import json

    from dualenc.train_eval import format_before_after

    out, step, params = {}, int(rt.state["step"]), rt.state["params"]
    dev_split, split = config.data.dev.split, config.eval.before_after_split
    if config.data.dev.path and int(config.eval.every_steps) >= 0:
        out["dev"] = _eval_split(config, rt.base, params, dev_split)
        _write_scalars(rt.writer, "dev", out["dev"], step)
    if split:
        after = out["dev"] if split == dev_split and "dev" in out else None
        out[f"after/{split}"] = after or _eval_split(config, rt.base, params, split)
        if before_path.exists():
            out[f"before/{split}"] = json.loads(before_path.read_text())
            _log(format_before_after(out[f"before/{split}"], out[f"after/{split}"], split))
    return out


def _log(msg: str) -> None:
    from absl import logging

    logging.info(msg)
    if jax.process_index() == 0:
        print(msg, flush=True)


def _writer(workdir):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


def _loop(config, rt, guard):
    """Runs steps rt.start+1..rt.num_steps (updating rt.state); returns (last logged metrics,
    the log, preempted). Metrics stay on device until a log step."""
    import time

    from tqdm import tqdm

    from dualenc import sharding

    rng = jax.random.key(int(config.seed), impl=config.train.rng_impl)
    log_every, eval_every = int(config.log.every_steps), int(config.eval.every_steps)
    history, last, logged, n_ex, n_tok, t0 = [], {}, [], 0, 0, time.time()
    bar = tqdm(
        total=rt.num_steps,
        initial=rt.start,
        desc="train",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    step, preempted = rt.start, False
    while step < rt.num_steps:
        batch = next(rt.pipeline)
        n_ex += batch["q_input_ids"].shape[0]
        n_tok += int(batch["q_attention_mask"].sum()) + int(batch["p_attention_mask"].sum())
        rt.state, metrics = rt.step_fn(rt.state, sharding.shard_batch(batch, rt.mesh), rng)
        step += 1
        history.append((step, metrics))
        bar.update(1)
        if step % log_every == 0 or step == rt.num_steps:
            jax.block_until_ready(metrics)  # the window's time covers its compute
            last = _log_window(history, time.time() - t0, n_ex, n_tok, rt.writer, step, bar)
            logged.append({"step": step, **last})
            history, n_ex, n_tok, t0 = [], 0, 0, time.time()
        if eval_every > 0 and step % eval_every == 0 and step < rt.num_steps:
            dev = _eval_split(config, rt.base, rt.state["params"], config.data.dev.split)
            _write_scalars(rt.writer, "dev", dev, step)
            t0 = time.time()
        if guard.requested:  # the caller saves this step
            preempted = True
            break
        if rt.ckpt.should_save(step) and step < rt.num_steps:
            rt.ckpt.save(step, rt.state, rt.pipeline.get_state())
    bar.close()
    if history:
        jax.block_until_ready(history[-1][1])
        last = _log_window(history, time.time() - t0, n_ex, n_tok, rt.writer, step, bar)
    return last, logged, preempted


def _log_window(history, seconds, n_ex, n_tok, writer, step, bar) -> dict[str, float]:
    """Fetches a window of step metrics, stops on a non-finite loss, logs the means."""
    _check_finite(history)
    last = _summarise(history, seconds, n_ex, n_tok)
    _write_scalars(writer, "train", last, step)
    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
    bar.write(
        f"step {step}: loss {last['loss']:.4f} acc {last.get('accuracy', 0):.3f} "
        f"lr {last['lr']:.2e} |g| {last['grad_norm']:.3f} "
        f"{last['examples_per_sec']:.1f} ex/s {last['tokens_per_sec']:.0f} tok/s"
    )
    return last
