"""End-to-end and step-level tests of the trainer on a tiny random BERT and tiny DPR data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualenc.biencoder import model as bi_model
from dualenc.biencoder import step as bi_step
from dualenc.biencoder import task as bi_task
from dualenc.training import loop
from dualenc.training import state as state_lib

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "apple river stone cloud tiger piano garden rocket silver forest castle ocean "
    "violin desert candle mirror planet bridge falcon meadow"
).split()


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by this session's runs (and its subprocesses): identical
    programs built by different trainers compile once. Results are unaffected."""
    yield from use_compile_cache(tmp_path_factory.getbasetemp() / "jax_cache")


def use_compile_cache(path: Path):
    keys = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in keys.items():
        jax.config.update(k, v)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def write_tiny_data(root: Path, n: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """(DPR train.json, BEIR dir with test/dev qrels): query i names two words that its positive
    passage repeats; the hard negative shares one of them."""
    rng = np.random.default_rng(seed)
    rows, corpus, queries, qrels = [], [], [], []
    for i in range(n):
        a, b = rng.choice(len(WORDS), 2, replace=False)
        filler = " ".join(rng.choice(WORDS, 4))
        pos = f"the {WORDS[a]} and the {WORDS[b]} number {i} {filler}"
        neg = f"the {WORDS[a]} without number {i + n} {filler}"
        q = f"where is {WORDS[a]} with {WORDS[b]} {i}"
        rows.append(
            {
                "question": q,
                "answers": [str(i)],
                "positive_ctxs": [{"title": "", "text": pos, "passage_id": f"d{i}"}],
                "negative_ctxs": [],
                "hard_negative_ctxs": [{"title": "", "text": neg, "passage_id": f"n{i}"}],
            }
        )
        corpus += [
            {"_id": f"d{i}", "title": "", "text": pos},
            {"_id": f"n{i}", "title": "", "text": neg},
        ]
        queries.append({"_id": f"q{i}", "text": q})
        qrels.append(f"q{i}\td{i}\t1")
    root.mkdir(parents=True, exist_ok=True)
    train = root / "train.json"
    train.write_text(json.dumps(rows))
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split in ("test", "dev"):
        (beir / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n"
        )
    return train, beir


def tiny_config(tmp_path: Path, **overrides):
    """configs/tiny.py pointed at tiny data in tmp_path; overrides as 'a.b': value."""
    sys.path.insert(0, str(REPO))
    from configs import tiny

    train, beir = write_tiny_data(tmp_path / "data")
    c = tiny.get_config()
    c.data.train.path = str(train)
    c.data.dev.path = str(beir)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """Two identical runs (same config + seed) with export and before/after eval."""
    tmp = tmp_path_factory.mktemp("e2e")
    out = []
    for name in ("a", "b"):
        c = tiny_config(
            tmp,
            **{
                "train.num_steps": 12,
                "export.enabled": True,
                "eval.before_after_split": "test",
                "eval.every_steps": 0,
            },
        )
        out.append(loop.train_and_evaluate(c, tmp / name))
    return tmp, out


def test_end_to_end_loss_decreases_and_metrics(e2e):
    _, (res, _) = e2e
    losses = [r["loss"] for r in res["log"]]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    before, after = res["before/test"], res["after/test"]
    assert set(before) >= {"nDCG@10", "RR@10", "R@10", "R@100"}
    assert after["nDCG@10"] > before["nDCG@10"], (before, after)
    assert "nDCG@10" in res["dev"]
    assert (Path(res["export_dir"]) / "modules.json").exists()


def test_export_loads_in_dualenc_and_sentence_transformers(e2e):
    from sentence_transformers import SentenceTransformer

    from dualenc.inference.encode import encode_texts
    from dualenc.models.loading import load_encoder

    _, (res, _) = e2e
    texts = ["where is apple with river 3", "the tiger and the piano number 7"]
    enc = load_encoder(res["export_dir"])
    ours = encode_texts(enc, texts, progress=False)
    st = SentenceTransformer(res["export_dir"], device="cpu").encode(texts)
    np.testing.assert_allclose(ours, st, atol=1e-5)


def test_same_seed_twice_is_bitwise_identical(e2e):
    _, (a, b) = e2e
    fa = Path(a["export_dir"]) / "model.safetensors"
    fb = Path(b["export_dir"]) / "model.safetensors"
    assert fa.read_bytes() == fb.read_bytes()
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]


# ----------------------------------------------------------------------------- step level


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, base encoder, tx, schedule, params, one host batch of 8)."""
    from dualenc.training import optim

    c = tiny_config(tmp_path_factory.mktemp("tiny"))
    base = bi_model.load_base_encoder(c.model)
    batch = next(iter(bi_task.make_pipeline(c, base.tokenizer, packing=False)))  # GradCache
    tx, schedule = optim.make_optimizer(c.train, 10)
    return c, base, tx, schedule, bi_model.initial_dual_params(base, True), batch


def _grads(c, base, params, batch, chunk):
    embed_q, embed_p = bi_step.embed_fns(base.spec, False)
    loss_fn = bi_step.make_loss_fn(c.loss)
    b, rng = jax.tree.map(jnp.asarray, batch), jax.random.key(0)
    if chunk:
        return jax.jit(lambda p: bi_step.cache_grads(embed_q, embed_p, loss_fn, p, b, rng, chunk))(
            params
        )
    return jax.jit(lambda p: bi_step.plain_grads(embed_q, embed_p, loss_fn, p, b, rng))(params)


def test_gradcache_equals_plain_step(tiny):
    c, base, _, _, params, batch = tiny
    loss, _, g_plain = _grads(c, base, params, batch, 0)
    loss_c, _, g_cache = _grads(c, base, params, batch, 4)
    np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g_cache, g_plain)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_plain)) > 1e-4


def _one_step(c, base, tx, schedule, params, batch, mesh):
    from dualenc import sharding

    state, sh = state_lib.create_state(params, tx, mesh, state_lib.mesh_rules(c))
    step = state_lib.jit_train_step(bi_step.make_train_step(c, base.spec, tx, schedule), sh, mesh)
    state, metrics = step(state, sharding.shard_batch(batch, mesh), jax.random.key(0))
    return jax.device_get(state["params"]), jax.device_get(metrics)


def _mesh(shape):
    from dualenc.sharding import make_mesh

    return make_mesh(shape, devices=jax.devices()[: int(np.prod(shape))])


def test_grad_accumulation_equals_mean_of_micro_batch_grads(tiny):
    """2 micro-batches of B/2 (rows i::2) == one update with the mean of their gradients."""
    import optax

    c, base, tx, schedule, params, batch = tiny
    c = c.copy_and_resolve_references()
    c.train.grad_accum_steps = 2
    got, metrics = _one_step(c, base, tx, schedule, params, batch, _mesh((1, 1)))
    halves = [jax.tree.map(lambda x, i=i: x[i::2], batch) for i in range(2)]
    gs = [_grads(c, base, params, h, 0)[2] for h in halves]
    g = jax.tree.map(lambda a, b: (a + b) / 2, *gs)
    updates, _ = tx.update(g, tx.init(params), params)
    want = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, want)
    assert np.isfinite(metrics["loss"])


@pytest.fixture(scope="module")
def single_device_step(tiny):
    return _one_step(*tiny, _mesh((1, 1)))


@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_sharded_step_equals_single_device(tiny, single_device_step, shape):
    """Batch over data×fsdp, kernels and embeddings split over 'fsdp' (sharding.DEFAULT_RULES)."""
    ref, m_ref = single_device_step
    got, m_got = _one_step(*tiny, _mesh(shape))
    np.testing.assert_allclose(m_got["loss"], m_ref["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, ref)


def test_bf16_runs(tmp_path):
    c = tiny_config(tmp_path, **{"model.dtype": "bfloat16", "train.num_steps": 2})
    res = loop.train_and_evaluate(c, tmp_path / "w")
    assert res["step"] == 2 and np.isfinite(res["train/loss"])


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    c = tiny_config(tmp_path, **{"loss.scale": float("nan"), "train.num_steps": 3})
    with pytest.raises(loop.NonFiniteLossError, match="at step 1"):
        loop.train_and_evaluate(c, tmp_path / "w")


@pytest.mark.parametrize("flag", ["--config.train.num_stepz=3", "--config.train.num_steps=abc"])
def test_bad_config_flag_fails_before_training(tmp_path, flag):
    workdir = tmp_path / "w"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dualenc.train",
            "--config",
            str(REPO / "configs/tiny.py"),
            "--workdir",
            str(workdir),
            flag,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "num_step" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_a_config_file_that_fails_to_load_is_one_line_exit_2(tmp_path):
    """get_config raising (here an unknown variant) names the error, without its traceback."""
    cmd = [sys.executable, "-m", "dualenc.train", "--config", "configs/cross_mrpc.py:bogus"]
    cmd += ["--workdir", str(tmp_path / "w")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "unknown variant 'bogus'" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "args, message",
    [
        ((30, 1, 1, 4, 0), "train.batch_size=30 is not divisible by train.grad_accum_steps=4"),
        ((16, 8, 1, 4, 0), "= 4 rows per micro-batch is not divisible by the 8 devices"),
        ((32, 8, 1, 1, 12), "not divisible by train.cache_chunk_size=12"),
        ((32, 8, 1, 1, 4), "train.cache_chunk_size=4 is not divisible by the 8 devices"),
        ((12, 4, 8, 1, 0), "train.batch_size=12 is not divisible by the 8 processes"),
    ],
)
def test_batch_divisibility_names_the_keys(args, message):
    from dualenc.training.config import ConfigError, validate_batch

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_batch(*args)


def test_batch_divisibility_accepts_what_works():
    from dualenc.training.config import validate_batch

    validate_batch(64, 8, 2, 2, 16)  # 32 rows per micro-batch, chunks of 16 over 8 devices
    validate_batch(8, 1, 1, 1, 0)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.grad_accum_steps=3", "train.batch_size=8 is not divisible by"),
        ("--config.loss.name=hinge", "loss.name='hinge' must be one of"),
        ("--config.data.buckets=(64,32)", "data.buckets must be increasing positive integers"),
        ("--config.data.train.path=/nonexistent/train.json", "/nonexistent/train.json"),
    ],
)
def test_cli_bad_config_or_data_is_one_line_exit_2(tmp_path, flag, message):
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "dualenc.train", "--config", str(REPO / "configs/tiny.py")]
    cmd += ["--workdir", str(workdir), "--config.data.train.path=x.json", flag]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if "grad_accum" in flag or "loss.name" in flag or "buckets" in flag:  # checked before files
        assert not workdir.exists()


def test_cli_distillation_without_teacher_scores_is_one_line_exit_2(tmp_path):
    data, _ = write_tiny_data(tmp_path / "data", n=16)  # DPR: no teacher scores
    cmd = [sys.executable, "-m", "dualenc.train", "--config", str(REPO / "configs/tiny.py")]
    cmd += ["--workdir", str(tmp_path / "w"), f"--config.data.train.path={data}"]
    cmd += ["--config.loss.name=margin_mse"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "distils teacher scores, but data.train.path=" in lines[0]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- resume + progress


def test_resume_never_reads_the_pretrained_weights(tmp_path, monkeypatch):
    """Resuming builds the state with jax.eval_shape and restores it: a pretrained model whose
    weights cannot be read still resumes, bit-identically to the uninterrupted run."""
    import shutil

    from ml_collections import ConfigDict

    from dualenc.models import loading, saving

    c = tiny_config(tmp_path, **{"train.num_steps": 4, "export.enabled": True})
    model_dir = tmp_path / "pretrained"
    saving.save_sentence_transformers(bi_model.load_base_encoder(c.model), model_dir)
    c.model.init_random, c.model.name_or_path = False, str(model_dir)
    c.model.config_overrides = ConfigDict()
    loop.train_and_evaluate(c, tmp_path / "a")
    want = (tmp_path / "a" / "export" / "model.safetensors").read_bytes()
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")  # as if stopped after step 2

    def no_weights(_):
        raise AssertionError("pretrained weights read on resume")

    monkeypatch.setattr(loading, "read_state_dict", no_weights)
    bi_model.load_pretrained.cache_clear()
    res = loop.train_and_evaluate(c, tmp_path / "b")
    assert res["step"] == 4 and [r["step"] for r in res["log"]] == [3, 4]
    assert (tmp_path / "b" / "export" / "model.safetensors").read_bytes() == want


def test_progress_counts_only_completed_steps(tmp_path, monkeypatch):
    """The bar reaches step s only after step s's results are ready (never at dispatch)."""
    import types

    events = []
    c = tiny_config(tmp_path, **{"train.num_steps": 5, "log.every_steps": 2})

    metrics = {}  # step -> its metrics dict

    class FakeStep:
        compile_seconds = 0.0

        def __call__(self, state, batch, rng):
            events.append(("dispatch", state + 1))
            metrics[state + 1] = {"loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "num_tokens": 8.0}
            return state + 1, metrics[state + 1]

    class FakeBar:
        def __init__(self, total, initial, **kw):
            self.n = initial

        def update(self, n):
            self.n += n
            events.append(("bar", self.n))

        def set_postfix(self, **kw): ...

        def write(self, msg): ...

        def close(self): ...

    def ready(m):  # jax.block_until_ready: the step whose metrics these are is now done
        events.append(("ready", next(s for s, v in metrics.items() if v is m)))

    step_fn = FakeStep()
    monkeypatch.setattr(loop, "tqdm", FakeBar)
    monkeypatch.setattr(loop.sharding, "shard_batch", lambda b, mesh: b)
    monkeypatch.setattr(loop.jax, "block_until_ready", ready)
    guard = types.SimpleNamespace(should_stop=lambda: False)
    ckpt = types.SimpleNamespace(should_save=lambda s: False)
    run = types.SimpleNamespace(
        config=c,
        start=0,
        num_steps=5,
        task=types.SimpleNamespace(name="biencoder", pipeline=iter([{}] * 5), evaluate=None),
        mesh=None,
        step_fn=step_fn,
        rng=None,
        writer=None,
        ckpt=ckpt,
    )
    state, last, logged, preempted = loop.run_loop(run, 0, loop.Early(), guard)
    assert state == 5 and not preempted and [r["step"] for r in logged] == [2, 4, 5]
    bars = [s for e, s in events if e == "bar"]
    assert bars[-1] == 5
    for s in bars:
        assert events.index(("ready", s)) < events.index(("bar", s)), events


def test_init_from_a_workdir_starts_from_its_params(tmp_path):
    """`init_from` = a previous workdir: with learning rate 0 the new run exports its params."""
    c = tiny_config(tmp_path, **{"train.num_steps": 2, "export.enabled": True})
    loop.train_and_evaluate(c, tmp_path / "a")
    c2 = tiny_config(
        tmp_path, **{"train.num_steps": 1, "export.enabled": True, "train.learning_rate": 0.0}
    )
    c2.init_from = str(tmp_path / "a")
    loop.train_and_evaluate(c2, tmp_path / "b")
    got = (tmp_path / "b" / "export" / "model.safetensors").read_bytes()
    assert got == (tmp_path / "a" / "export" / "model.safetensors").read_bytes()


def test_bm25_mining_never_returns_a_judged_positive(tmp_path):
    """Query i's own passage d{i} ranks first in BM25 (it shares every query word) but is judged
    relevant: never a negative."""
    from dualenc.data import negatives
    from dualenc.data.beir import load_beir
    from dualenc.data.st_format import examples_from_beir

    _, beir = write_tiny_data(tmp_path)
    ds = load_beir(beir, "test")
    negs = negatives.bm25_negatives(ds, depth=3)
    assert set(negs) == set(ds.qrels)
    for q, ids in negs.items():
        i = q[1:]
        assert 0 < len(ids) <= 3 and f"d{i}" not in ids and set(ids) <= set(ds.corpus), (q, ids)
    examples = examples_from_beir(ds, negatives.bm25_negatives(ds, depth=2, skip=1))
    assert examples and all(len(ex.negatives) <= 2 for ex in examples)


def test_dev_eval_early_stopping(tmp_path, monkeypatch):
    """Bi-encoder dev eval every step; `eval.patience` evals without gain stop the run, and the
    stop is checkpointed and exported."""
    seq = iter([0.5, 0.4, 0.3, 0.9])
    monkeypatch.setattr(bi_task, "eval_split", lambda *a: {"nDCG@10": next(seq)})
    over = {"train.num_steps": 10, "eval.every_steps": 1, "eval.patience": 2}
    c = tiny_config(tmp_path, **over, **{"export.enabled": True})
    r = loop.train_and_evaluate(c, tmp_path / "w")
    assert r["step"] == 3 and r["early_stopped"] and r["best_step"] == 1
    assert [h["step"] for h in r["dev_history"]] == [1, 2, 3]
    assert (tmp_path / "w" / "checkpoints" / "3").is_dir()
    assert (tmp_path / "w" / "export" / "model.safetensors").exists()


def test_unknown_task_is_a_config_error(tmp_path):
    from dualenc.training.config import ConfigError

    c = tiny_config(tmp_path)
    c.task = "colbert"
    with pytest.raises(ConfigError, match="task"):
        loop.train_and_evaluate(c, tmp_path / "w")


def test_matryoshka_training_and_dims_wider_than_the_model(tmp_path, monkeypatch):
    """loss.matryoshka_dims trains (the prefix losses are logged, prefixes renormalised since the
    tower normalises), and a dim wider than the tower's embeddings is a ConfigError naming the
    key before any step runs."""
    from dualenc.biencoder import loss_registry
    from dualenc.training.config import ConfigError

    seen, make = [], loss_registry.make_loss
    monkeypatch.setattr(
        loss_registry, "make_loss", lambda lc, **kw: seen.append(kw) or make(lc, **kw)
    )
    c = tiny_config(tmp_path, **{"train.num_steps": 2, "loss.matryoshka_dims": (32, 8)})
    res = loop.train_and_evaluate(c, tmp_path / "w")
    assert res["step"] == 2 and np.isfinite(res["train/loss@8"]) and seen == [{"normalize": True}]
    assert res["train/loss"] == pytest.approx(res["train/loss@32"] + res["train/loss@8"], rel=1e-5)
    c = tiny_config(tmp_path, **{"loss.matryoshka_dims": (64, 8)})  # the tiny tower is 32-dim
    with pytest.raises(ConfigError, match=r"loss.matryoshka_dims=\(64, 8\): 64 exceeds .* 32-dim"):
        loop.train_and_evaluate(c, tmp_path / "w2")
    assert not (tmp_path / "w2" / "checkpoints").exists()


def test_keep_best_exports_the_best_dev_step_also_after_a_resume(tmp_path, monkeypatch):
    """`eval.keep_best`: WORKDIR/best holds the best dev step; export/ is that model (and the
    reported dev is its), also when the best was found before a resume (read back from best/)."""
    from safetensors.numpy import load_file

    seq = iter([0.5, 0.9, 0.3])
    monkeypatch.setattr(bi_task, "eval_split", lambda *a: {"nDCG@10": next(seq)})
    over = {"eval.every_steps": 1, "eval.keep_best": True, "export.enabled": True}
    w = tmp_path / "w"
    r3 = loop.train_and_evaluate(tiny_config(tmp_path, **over, **{"train.num_steps": 3}), w)
    assert r3["best_step"] == 2 and r3["dev"] == {"nDCG@10": 0.9}
    best = (w / "best" / "model.safetensors").read_bytes()
    assert (w / "export" / "model.safetensors").read_bytes() == best
    seq = iter([0.2])  # resume to step 4: no gain, the best comes back from best/
    r4 = loop.train_and_evaluate(tiny_config(tmp_path, **over, **{"train.num_steps": 4}), w)
    assert r4["step"] == 4 and r4["best_step"] == 2
    assert [h["step"] for h in r4["dev_history"]] == [1, 2, 3, 4]
    got, want = (
        load_file(str(w / "export" / "model.safetensors")),
        load_file(str(w / "best" / "model.safetensors")),
    )
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    plain = {**over, "eval.keep_best": False, "train.num_steps": 3}
    seq = iter([0.5, 0.9, 0.3])  # same run without keep_best: the step-3 model is exported
    loop.train_and_evaluate(tiny_config(tmp_path, **plain), tmp_path / "f")
    assert (tmp_path / "f" / "export" / "model.safetensors").read_bytes() != best  # step 3 != 2
