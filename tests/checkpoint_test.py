"""Checkpoint/resume: kill -9 and SIGTERM mid-run resume bit-identically; iterator state; an
unfinalised or corrupted newest step is skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_test import REPO, tiny_config, use_compile_cache

from dualenc.biencoder import model as bi_model
from dualenc.biencoder import task as bi_task
from dualenc.training.checkpoint import Checkpointer, abstract_like

NUM_STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Shared persistent XLA cache: the resumed subprocess runs reuse compiled programs."""
    path = tmp_path_factory.getbasetemp() / "jax_cache"
    os.environ.update(
        {
            "JAX_COMPILATION_CACHE_DIR": str(path),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
    )
    try:
        yield from use_compile_cache(path)
    finally:
        for k in (
            "JAX_COMPILATION_CACHE_DIR",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
        ):
            os.environ.pop(k, None)


def _flags(c) -> list[str]:
    return [
        f"--config.data.train.path={c.data.train.path}",
        f"--config.data.dev.path={c.data.dev.path}",
        f"--config.train.num_steps={NUM_STEPS}",
        "--config.checkpoint.every_steps=2",
        "--config.export.enabled=True",
        "--config.log.every_steps=1",
        "--config.train.dropout=True",  # resume must also replay the dropout masks
    ]


def _start(c, workdir: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "dualenc.train",
        "--config",
        str(REPO / "configs/tiny.py"),
        "--workdir",
        str(workdir),
        *_flags(c),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _run_until(c, workdir: Path, step: int, sig) -> int:
    """Starts a run, sends `sig` once it printed 'step {step}:', returns the exit code."""
    proc = _start(c, workdir)
    for line in proc.stdout:
        if line.startswith(f"step {step}:"):
            proc.send_signal(sig)
            break
    proc.stdout.read()
    return proc.wait(timeout=300)


def _finish(c, workdir: Path) -> bytes:
    proc = _start(c, workdir)
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, out[-2000:]
    return (workdir / "export" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Config + exported weights of an uninterrupted subprocess run."""
    tmp = tmp_path_factory.mktemp("ref")
    c = tiny_config(tmp)
    return c, _finish(c, tmp / "ref")


def test_kill9_then_resume_is_bit_identical(reference, tmp_path):
    """The kill point is drawn from a printed seed (DUALENC_TEST_SEED replays a failure)."""
    c, want = reference
    seed = int(os.environ.get("DUALENC_TEST_SEED", np.random.SeedSequence().entropy % 2**31))
    r = int(np.random.default_rng(seed).integers(2, NUM_STEPS - 1))
    print(f"kill -9 after step {r} (DUALENC_TEST_SEED={seed})")
    rc = _run_until(c, tmp_path / "w", r, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (tmp_path / "w" / "export").exists()
    assert _finish(c, tmp_path / "w") == want, f"killed after step {r} (DUALENC_TEST_SEED={seed})"


def test_sigterm_saves_exits_cleanly_and_resumes_bit_identically(reference, tmp_path):
    c, want = reference
    rc = _run_until(c, tmp_path / "w", 3, signal.SIGTERM)
    assert rc == 0
    steps = Checkpointer(tmp_path / "w").all_steps()
    assert steps and 3 <= steps[-1] < NUM_STEPS, steps
    assert _finish(c, tmp_path / "w") == want


def _small_state():
    return {"step": jnp.array(4, jnp.int32), "params": {"w": jnp.arange(6.0).reshape(2, 3)}}


def test_unfinalised_and_corrupt_steps_are_ignored(tmp_path):
    ck = Checkpointer(tmp_path, keep=5, async_save=False)
    state = _small_state()
    ck.save(4, state, {"pos": 4})
    ck.wait()
    tmp_dir = ck.directory / "6.orbax-checkpoint-tmp-1234567"  # a save killed before rename
    (tmp_dir / "state").mkdir(parents=True)
    (tmp_dir / "state" / "partial").write_bytes(b"\0" * 10)
    assert ck.all_steps() == [4]
    (ck.directory / "8" / "state").mkdir(parents=True)  # finalised name, unreadable contents
    got, data, step = ck.restore(abstract_like(state))
    assert step == 4 and data == {"pos": 4}
    np.testing.assert_array_equal(got["params"]["w"], state["params"]["w"])
    ck.close()


def test_iterator_state_roundtrip_gives_same_batches(tmp_path):
    c = tiny_config(tmp_path)
    base = bi_model.load_base_encoder(c.model)
    pipe = bi_task.make_pipeline(c, base.tokenizer)
    it = iter(pipe)
    for _ in range(3):
        next(it)
    ck = Checkpointer(tmp_path / "w", async_save=False)
    ck.save(3, _small_state(), pipe.get_state())
    ck.wait()
    want = [next(it) for _ in range(4)]  # crosses the 6-batch epoch boundary
    pipe2 = bi_task.make_pipeline(c, base.tokenizer)
    _, data, _ = ck.restore(abstract_like(_small_state()))
    pipe2.set_state(data)
    it2 = iter(pipe2)
    for a in want:
        b = next(it2)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    ck.close()


def test_restore_onto_another_mesh_keeps_optimizer_types(tmp_path):
    import optax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    tx = optax.adamw(1e-3)
    params = {"w": jnp.ones((8, 4))}
    state = {"step": jnp.array(1, jnp.int32), "params": params, "opt_state": tx.init(params)}
    ck = Checkpointer(tmp_path, async_save=True)
    ck.save(1, state, {})
    ck.wait()
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(4, 1), ("data", "fsdp"))
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(mesh, P("data") if x.ndim == 2 else P())
        ),
        state,
    )
    got, _, _ = ck.restore(target)
    assert type(got["opt_state"][0]) is type(state["opt_state"][0])
    assert got["params"]["w"].sharding.spec == P("data")
    ck.close()
