"""The bi-encoder task (config.task == 'biencoder', the default): what it hands the loop.

Its params (pretrained, `init_from` a workdir or model dir, or abstract on resume), its batches
(`TrainPipeline`, hard negatives mined per `data.mine_negatives`, rows packed where the run
allows), its step (`biencoder.step`), retrieval evaluation on `data.dev.path` and a
sentence-transformers export (query/ and passage/ for separate towers). The loop does the rest.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax
import numpy as np

from dualenc import multihost, tokenization
from dualenc.biencoder import loss_registry, matryoshka
from dualenc.biencoder import model as model_lib
from dualenc.biencoder.step import make_train_step
from dualenc.data import negatives
from dualenc.data.pipeline import TrainPipeline
from dualenc.models import dual_encoder
from dualenc.models.loading import Encoder, load_encoder, load_towers
from dualenc.models.saving import save_sentence_transformers
from dualenc.retrieval import engine
from dualenc.training import config as config_lib
from dualenc.training.checkpoint import Checkpointer
from dualenc.training.logs import log
from dualenc.training.task import Task


def build(config, resumed: bool) -> Task:
    """The bi-encoder Task; on resume the pretrained weights are never read."""
    base = model_lib.load_base_encoder(config.model, weights=not resumed)
    try:  # the embedding width is known only now
        dims = config.loss.get("matryoshka_dims", ())
        matryoshka.check_dims(dims, config.loss.get("matryoshka_weights", ()), base.dim)
    except ValueError as e:
        raise config_lib.ConfigError(f"{e} ({config.model.name_or_path})") from None
    packed = use_packing(config, base.spec.arch)
    pipeline = make_pipeline(config, base.tokenizer, packed)
    if packed:
        log_packing(pipeline)
    if config.loss.name in loss_registry.DISTILLATION and not pipeline.data.has_scores:
        raise config_lib.ConfigError(
            f"loss.name={config.loss.name!r} distils teacher scores, but data.train.path="
            f"{config.data.train.path!r} carries none (write them with dualenc.mine, or choose "
            "loss.name='contrastive')"
        )
    shared = bool(config.model.shared_towers)
    if resumed:  # abstract: the checkpoint holds the weights
        params, source = model_lib.initial_dual_params(base, shared), ""
    else:
        params, source = initial_params(config, base)
    e, has_dev = config.eval, bool(config.data.dev.path)
    return Task(
        name="biencoder",
        describe=f"model {config.model.name_or_path}" + (f" from {source}" if source else ""),
        params=params,
        pipeline=pipeline,
        make_step=functools.partial(make_train_step, config, base.spec),
        evaluate=(lambda p: eval_split(config, base, p, config.data.dev.split))
        if has_dev
        else None,
        eval_metric=str(e.metric),
        dev_value=lambda dev: dev_metric(dev, str(e.metric)),
        patience=int(e.patience),
        keep_best=bool(e.keep_best),
        save_best=lambda p, step, dev, out: multihost.write_on_main(
            export, base, p, out, barrier_name="best"
        ),
        load_best=lambda best_dir: load_best(config, best_dir),
        split_eval=lambda p, split: eval_split(config, base, p, split),
        export=lambda p, out, step: export(base, p, out),
        export_note="exported sentence-transformers model",
    )


def dev_metric(dev: dict, name: str) -> float:
    """`eval.metric` out of the retrieval metrics, or a ConfigError naming what there is."""
    if name not in dev:
        raise config_lib.ConfigError(f"eval.metric={name!r} is not a dev metric: {sorted(dev)}")
    return float(dev[name])


def use_packing(config, arch: str) -> bool:
    """`data.packing` where this run allows it: no GradCache or accumulation (they slice padded
    rows), BERT / DistilBERT towers (DeBERTa's relative positions would cross segments); padded
    batches otherwise, said once in the log. Any number of processes: each packs its part of
    the global batch's rows. Packed and padded give the same loss and gradients up to rounding
    (tests/packing_test.py)."""
    if not config.data.get("packing", False):
        return False
    t = config.train
    why = [
        *(["train.cache_chunk_size > 0"] if int(t.cache_chunk_size) > 0 else []),
        *(["train.grad_accum_steps > 1"] if int(t.grad_accum_steps) > 1 else []),
        *([f"a {arch} model"] if arch not in dual_encoder.PACKABLE_ARCHS else []),
    ]
    if why:
        log(f"data.packing: padded batches instead ({', '.join(why)})")
    return not why


def log_packing(pipeline: TrainPipeline) -> None:
    """One line with the packed rows of the first global batch, so that a run shows (and a test
    can check) that its texts really share rows, on every process count."""
    b, n = pipeline.batch_at(0, 0), pipeline.process_count
    q_rows, lq = b["q_input_ids"].shape
    p_rows, lp = b["p_input_ids"].shape
    log(
        f"data.packing: batch 0 packs {b['q_text_row'].size * n} queries into {q_rows * n} rows "
        f"of {lq} tokens and {b['p_text_row'].size * n} passages into {p_rows * n} rows of {lp} "
        f"({q_rows} + {p_rows} rows on each of {n} process(es))"
    )


def make_pipeline(config, tokenizer, packing: bool | None = None) -> TrainPipeline:
    """The TrainPipeline over `data.train` (global batch `train.batch_size`); for BEIR training
    data, hard negatives are mined per `data.mine_negatives` (`negatives.config_negatives`).
    Rows are packed when `packing` (default: `data.packing` as set; `build` passes
    `use_packing`)."""
    d = config.data
    examples = None
    if d.train.format == "beir" and d.mine_negatives:
        examples = negatives.config_examples(d)
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


def initial_params(config, base) -> tuple[dict, str]:
    """(params, source) for a fresh run: `config.init_from` (a workdir or model dir), else the
    base encoder's (pretrained or random) weights."""
    shared = bool(config.model.shared_towers)
    init_from = config.get("init_from") or ""
    if not init_from:
        return model_lib.initial_dual_params(base, shared), base.source
    if (multihost.epath(init_from) / "checkpoints").is_dir():
        ck = Checkpointer(init_from, async_save=False)
        step = ck.latest_step()
        state, _, _ = ck.restore(None, step)
        got = multihost.to_host(state["params"])
        want = model_lib.initial_dual_params(base, shared)
        if jax.tree.structure(got) != jax.tree.structure(want):
            raise ValueError(f"init_from {init_from}: params tree does not match the model")
        ck.close()
        return got, f"{init_from} (step {step})"
    enc = load_encoder(init_from, dtype=config.model.dtype)
    return model_lib.initial_dual_params(enc, shared), init_from


def eval_split(config, base: Encoder, host_params, split: str) -> dict[str, float]:
    """Retrieval metrics of the towers holding `host_params` on split `split` of
    `data.dev.path`, per `eval.*` (every process calls it)."""
    q_enc, p_enc = model_lib.tower_encoders(base, host_params)
    return eval_encoders(config, q_enc, p_enc, split)


def eval_encoders(config, q_enc, p_enc, split: str) -> dict[str, float]:
    """Retrieval metrics of (q_enc, p_enc) on split `split` of `data.dev.path`, per `eval.*`."""
    e = config.eval
    ds = engine.load_split(config.data.dev.path, split, int(e.max_queries))
    return engine.evaluate_retrieval(
        q_enc,
        p_enc,
        ds,
        k_values=tuple(e.k_values),
        batch_size=int(e.batch_size),
        max_length=int(e.max_length) or None,
    )


def export(base: Encoder, host_params, out) -> None:
    """sentence-transformers dir(s) at `out` (query/ + passage/ for separate towers); a `gs://`
    workdir gets a local export copied up."""
    if multihost.is_local(out):
        save_towers(base, host_params, Path(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_towers(base, host_params, Path(tmp) / "export")
        for f in sorted((Path(tmp) / "export").rglob("*")):
            if f.is_file():
                dst = out / str(f.relative_to(Path(tmp) / "export"))
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())


def load_best(config, best_dir) -> dict:
    """The dual params that `save_best` exported to `best_dir` (WORKDIR/best), for the final
    evaluation and export of a resumed `eval.keep_best` run."""
    q_enc, p_enc = load_towers(Path(str(best_dir)), dtype=config.model.dtype)
    if bool(config.model.shared_towers):
        return {"encoder": jax.tree.map(np.asarray, p_enc.params)}
    return {
        "q_encoder": jax.tree.map(np.asarray, q_enc.params),
        "p_encoder": jax.tree.map(np.asarray, p_enc.params),
    }


def save_towers(base: Encoder, host_params, out: Path) -> None:
    """One sentence-transformers dir (tied towers) or query/ + passage/ (separate towers)."""
    q_enc, p_enc = model_lib.tower_encoders(base, host_params)
    if q_enc is p_enc:
        save_sentence_transformers(p_enc, out)
    else:
        save_sentence_transformers(q_enc, out / "query")
        save_sentence_transformers(p_enc, out / "passage")
