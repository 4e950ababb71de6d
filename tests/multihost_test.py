"""Two real JAX processes on this machine (gloo CPU collectives, one device each) against one
process with two simulated devices: evaluate, encode and train must agree, and only process 0
writes. Also: `gs://`-style and `file://` workdirs reach the writers and the Checkpointer intact.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_data import WORDS, save_tiny_bert, write_beir, write_dpr

from dualenc import io, multihost

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_COMPILE_CACHE: dict[str, str] = {}  # a persistent XLA cache shared by this module's runs


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALENC_")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO),
        **_COMPILE_CACHE,
    )
    return env


def run_single(module: str, args: list[str], *, devices: int = 2, timeout: int = 300):
    """One process with `devices` simulated CPU devices."""
    r = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{module} failed:\n{r.stderr[-3000:]}"
    return r


def start_pair(
    module: str,
    args_per_process: list[list[str]],
    logs: list[Path] | None = None,
    cluster: list[dict[str, str]] | None = None,
) -> list[subprocess.Popen]:
    """Two processes of one JAX cluster (coordinator on a free local port), one device each.

    With `logs`, each process's stdout+stderr go to that file (to watch a run's progress).
    `cluster`: each process's own variables for finding the others, instead of dualenc's
    explicit DUALENC_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID."""
    port = _free_port()
    procs = []
    for i, args in enumerate(args_per_process):
        env = _env(1)
        env.update(
            cluster[i]
            if cluster
            else dict(
                DUALENC_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                DUALENC_NUM_PROCESSES=str(len(args_per_process)),
                DUALENC_PROCESS_ID=str(i),
            )
        )
        out = open(logs[i], "w") if logs else subprocess.PIPE  # noqa: SIM115 - closed by the OS
        cmd = [module] if module.endswith(".py") else ["-m", module]  # a script or a module
        procs.append(
            subprocess.Popen(
                [sys.executable, *cmd, *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if logs else subprocess.PIPE,
                text=True,
            )
        )
    return procs


def wait_pair(procs, timeout: int = 300) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) per process; kills both if either hangs."""
    deadline, out = time.time() + timeout, []
    try:
        for p in procs:
            o, e = p.communicate(timeout=max(1, deadline - time.time()))
            out.append((p.returncode, o, e))
    finally:
        kill_all(procs)
    return out


def kill_all(procs) -> None:
    """Kills whichever of `procs` still runs (a failed test leaves nothing behind)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def run_pair(module: str, args_per_process: list[list[str]], timeout: int = 300, cluster=None):
    res = wait_pair(start_pair(module, args_per_process, cluster=cluster), timeout)
    for i, (rc, _, err) in enumerate(res):
        assert rc == 0, f"process {i} of {module} exited {rc}:\n{err[-3000:]}"
    return res


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Identical programs (a resumed run, the same mesh twice) compile once across runs."""
    _COMPILE_CACHE.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    yield
    _COMPILE_CACHE.clear()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_path):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, seed=3)


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir"))


PRIMITIVES = """
import json, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from dualenc import multihost
assert multihost.initialize() and multihost.initialize()  # idempotent
i = jax.process_index()
mesh = jax.make_mesh((2,), ("fsdp",))
local = np.full((2, 3), i, np.float32)  # this host's rows of a (4, 3) array
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("fsdp")), local)
multihost.barrier("before")
wrote = multihost.write_on_main(lambda: i)
print(json.dumps({
    "gathered": multihost.to_host({"x": x})["x"].tolist(),
    "any": [multihost.any_host(i == 1), multihost.any_host(False), multihost.any_host(True)],
    "main": multihost.is_main(), "wrote": wrote,
}))
"""


def test_primitives_two_processes(tmp_path):
    """to_host gathers an array split across hosts; any_host agrees; write_on_main runs once."""
    script = tmp_path / "prims.py"
    script.write_text(PRIMITIVES)
    res = run_pair(str(script), [[], []], timeout=120)
    outs = [json.loads(o[o.find("{") :]) for _, o, _ in res]
    for i, out in enumerate(outs):
        assert out["gathered"] == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
        assert out["any"] == [True, False, True]
        assert out["main"] == (i == 0) and out["wrote"] == (0 if i == 0 else None)


# ------------------------------------------------------------------------- evaluate / encode


def test_evaluate_two_processes_equal_one(tiny_model, tiny_beir, tmp_path):
    """Corpus encoding and exact search sharded over two hosts give one process's metrics and
    run; only process 0 writes (process 1 is given another --output, which must stay absent).
    Each host encodes and searches its own shards on its own device, so the one-process run it
    equals bit for bit has one device too (a 2-device process shards each batch, and XLA's
    sums then differ in the last bit)."""
    common = ["--model", str(tiny_model), "--data", str(tiny_beir), "--split", "dev"]
    common += ["--index", "exact", "--k", "20", "--batch_size", "8", "--max_length", "32"]
    common += ["--progress=false", "--nocache"]  # encode (sharded) in both runs
    one, two, stray = tmp_path / "one", tmp_path / "two", tmp_path / "stray"
    r1 = run_single("dualenc.evaluate", [*common, "--output", str(one)], devices=1)
    t = time.time()
    res = run_pair(
        "dualenc.evaluate", [[*common, "--output", str(two)], [*common, "--output", str(stray)]]
    )
    print(f"2-process evaluate: {time.time() - t:.1f}s")
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1 == m2 and m1["num_queries"] == 20
    assert (one / "run.trec").read_text() == (two / "run.trec").read_text()
    assert not stray.exists()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    out0, out1 = (o[o.find("{") :] if "{" in o else "" for _, o, _ in res)  # gloo logs first
    assert json.loads(out0) == m1 and out1 == ""  # metrics printed once, by process 0
    for err in (r1.stderr, res[0][2]):
        assert err.count("1 of 61 documents are empty") == 1


def test_encode_two_processes_equal_one(tiny_model, tmp_path):
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, int(n))) for n in rng.integers(1, 30, size=37)]
    texts[5] = ""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    common = ["--model", str(tiny_model), "--input", str(inp), "--batch_size", "8"]
    common += ["--max_length", "32", "--progress=false", "--shard_size", "16"]
    one_cache = ["--cache_dir", str(tmp_path / "c1")]  # shards: a dir of their own per run,
    common += ["--cache_dir", str(tmp_path / "c2")]  # shared by the two hosts of the pair
    run_single(
        "dualenc.encode", [*common, *one_cache, "--output", str(tmp_path / "one.npy")], devices=1
    )
    t = time.time()
    run_pair(
        "dualenc.encode",
        [
            [*common, "--output", str(tmp_path / "two.npy")],
            [*common, "--output", str(tmp_path / "stray.npy")],
        ],
    )
    print(f"2-process encode: {time.time() - t:.1f}s")
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (37, 32)
    np.testing.assert_array_equal(one, two)
    assert not (tmp_path / "stray.npy").exists()


def test_cli_input_error_exit_2_on_both_processes(tiny_model, tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    args = ["--model", str(tiny_model), "--input", str(bad), "--output", str(tmp_path / "o.npy")]
    res = wait_pair(start_pair("dualenc.encode", [args, args]))
    for rc, _, err in res:
        assert rc == 2 and f"{bad}:2: malformed JSON" in err and "Traceback" not in err


# --------------------------------------------------------------------------- epath workdirs


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """gs://bucket/... served from tmp_path/gcs/bucket/... through epath's mock backend; the
    working directory is elsewhere, so a `Path("gs://...")` bug would write to ./gs:/..."""
    from etils.epath import testing as epath_testing

    root = tmp_path / "gcs"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def m(p):
        s = os.fspath(p)
        return str(root / s[len("gs://") :]) if s.startswith("gs://") else s

    def one(fn, p, *a, **k):
        return fn(m(p), *a, **k)

    def two(fn, p, dst, *a, **k):
        return fn(m(p), m(dst), *a, **k)

    def walk(fn, p, **k):
        yield from fn(m(p), **k)

    def glob(fn, p):
        return [("gs://" + os.path.relpath(g, root)) for g in fn(m(p))]

    fns = dict.fromkeys(("exists", "isdir", "listdir", "makedirs", "mkdir", "remove"), one)
    fns.update(dict.fromkeys(("rmtree", "stat", "open"), one))
    fns.update(copy=two, rename=two, replace=two, walk=walk, glob=glob)
    with epath_testing.mock_epath(**fns):
        yield root, cwd


def test_gs_workdir_reaches_writers_intact(fake_gcs):
    root, cwd = fake_gcs
    io.write_json("gs://bucket/run/metrics.json", {"a": 1})
    with io.atomic_write("gs://bucket/run/log.txt") as f:
        f.write("hello")
    for i in range(2):  # the second swap replaces the first export (unique side names)
        with io.atomic_dir(multihost.epath("gs://bucket/run/export")) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "w.txt").write_text(str(i))
    run = root / "bucket" / "run"
    assert json.loads((run / "metrics.json").read_text()) == {"a": 1}
    assert (run / "log.txt").read_text() == "hello"
    assert (run / "export" / "sub" / "w.txt").read_text() == "1"
    assert sorted(p.name for p in run.iterdir()) == ["export", "log.txt", "metrics.json"]
    assert list(cwd.iterdir()) == []  # nothing landed in a local gs:/ folder
    assert str(multihost.epath("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"


def test_gs_workdir_reaches_orbax_intact(monkeypatch):
    """The Checkpointer hands Orbax an epath `gs://` directory (Orbax itself needs GCS libraries
    that are not installed here, so its manager is replaced by a recorder)."""
    from etils import epath

    from dualenc.training import checkpoint

    seen = {}

    class Recorder:
        def __init__(self, directory, options=None):
            seen["directory"] = directory

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Recorder)
    checkpoint.Checkpointer("gs://bucket/run", keep=1)
    assert isinstance(seen["directory"], epath.Path)
    assert os.fspath(seen["directory"]) == "gs://bucket/run/checkpoints"


def test_file_url_workdir_checkpointer_round_trip(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from dualenc.training.checkpoint import Checkpointer

    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer(f"file://{tmp_path}/run", keep=1, async_save=False)
    state = {"w": jnp.arange(4.0), "step": jnp.int32(3)}
    ckpt.save(3, state, {"epoch": 1})
    ckpt.wait()
    got, data, step = ckpt.restore(jax_abstract(state))
    ckpt.close()
    assert step == 3 and data == {"epoch": 1}
    np.testing.assert_array_equal(got["w"], state["w"])
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
    assert not (tmp_path / "file:").exists()


def jax_abstract(tree):
    from dualenc.training.checkpoint import abstract_like

    return abstract_like(tree)


def test_should_stop_single_process():
    from dualenc.training.checkpoint import PreemptionGuard

    with PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not guard.requested and time.time() < deadline:
            time.sleep(0.01)
        assert guard.should_stop()


# ------------------------------------------------------------------------------------ training

STEPS = 10


def train_args(workdir: Path, train: Path, beir: Path, mesh: str) -> list[str]:
    """configs/tiny.py (random 1-layer BERT), global batch 8, dev eval every 3 steps and at the
    end, export on, no periodic checkpoint (only the final or the preemption one). Padded
    batches (packing off) in these runs: `test_packed_train_two_processes_equal_one` checks the
    packed ones."""
    return [
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.train.path={train}",
        f"--config.data.dev.path={beir}",
        f"--config.train.num_steps={STEPS}",
        "--config.eval.every_steps=3",
        "--config.eval.max_length=32",
        "--config.export.enabled=true",
        "--config.checkpoint.every_steps=1000",
        f"--config.mesh.shape={mesh}",
        "--config.data.packing=False",
    ]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory, tiny_beir):
    return write_dpr(tmp_path_factory.mktemp("dpr") / "train.json"), tiny_beir


_RUNS: dict[tuple, Path] = {}


def trained(tmp_path_factory, train_data, mesh: str, processes: int) -> Path:
    """Workdir of a finished run (memoised across the tests of this module)."""
    key = (mesh, processes)
    if key not in _RUNS:
        w = tmp_path_factory.mktemp(f"run_{processes}p_{mesh.strip('()').replace(',', 'x')}")
        args = train_args(w, *train_data, mesh)
        t = time.time()
        if processes == 1:
            run_single("dualenc.train", args)
        else:
            run_pair("dualenc.train", [args, args])
        print(f"train {processes} process(es), mesh {mesh}: {time.time() - t:.1f}s")
        _RUNS[key] = w
    return _RUNS[key]


def exported(workdir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(workdir / "export" / "model.safetensors"))


def assert_one_of_each(workdir: Path, steps=(STEPS,)) -> None:
    """One export, one metrics.json, finalised checkpoints only (no stray temp dirs)."""
    names = sorted(p.name for p in workdir.iterdir())
    assert names == ["checkpoints", "export", "metrics.json", "tensorboard"], names
    got = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert got == sorted(steps), got


@pytest.mark.parametrize("mesh", ["(2,1)", "(1,2)"], ids=["data", "fsdp"])
def test_train_two_processes_equal_one(tmp_path_factory, train_data, mesh):
    """The real `python -m dualenc.train` on two hosts (data mesh, and FSDP with parameters split
    across the hosts) ends with the parameters, dev metrics and files of one process with two
    devices: bit-identical parameters."""
    two = trained(tmp_path_factory, train_data, mesh, 2)
    one = trained(tmp_path_factory, train_data, mesh, 1)
    a, b = exported(one), exported(two)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical, not just 1e-6
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["step"] == m2["step"] == STEPS and m1["dev"] == m2["dev"]
    assert m1["train/loss"] == m2["train/loss"]
    assert_one_of_each(two)


PACKED = re.compile(
    r"data\.packing: batch 0 packs (\d+) queries into (\d+) rows .* (\d+) "
    r"passages into (\d+) rows"
)


def packed_rows(log: str) -> tuple[int, ...]:
    """(queries, their rows, passages, their rows) of batch 0 from a run's packing log line."""
    found = PACKED.findall(log)
    assert len(found) == 1 and "padded batches instead" not in log, log[-3000:]
    return tuple(int(x) for x in found[0])


def test_packed_train_two_processes_equal_one(tmp_path, train_data):
    """Issue 24: with data.packing on (the default), two hosts with the parameters split across
    them (FSDP (1,2)) export the bits of one process with two devices; every process logs that
    batch 0 really is packed (fewer rows than texts), so a silent fall back to padding fails."""
    steps = ["--config.train.num_steps=4", "--config.data.packing=True"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_single("dualenc.train", [*train_args(one, *train_data, "(1,2)"), *steps])
    args = [*train_args(two, *train_data, "(1,2)"), *steps]
    res = run_pair("dualenc.train", [args, args])
    logs = [r1.stdout, res[0][1], res[1][2]]  # process 1 logs through absl only
    rows = {packed_rows(log) for log in logs}
    assert len(rows) == 1, rows  # one layout on every process, whatever the process count
    (queries, q_rows, passages, p_rows) = rows.pop()
    assert (queries, passages) == (8, 16) and q_rows < queries and p_rows < passages
    a, b = exported(one), exported(two)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["step"] == m2["step"] == 4 and m1["train/loss"] == m2["train/loss"]


def test_sigterm_one_process_then_resume(tmp_path_factory, train_data, tmp_path):
    """SIGTERM to process 1 only: both processes save the same step and exit 0; a rerun with
    the same workdir resumes and ends bit-identical to an uninterrupted two-process run."""
    ref = trained(tmp_path_factory, train_data, "(2,1)", 2)
    w = tmp_path / "run"
    args = train_args(w, *train_data, "(2,1)")
    logs = [tmp_path / "log0", tmp_path / "log1"]
    procs = start_pair("dualenc.train", [args, args], logs)
    deadline = time.time() + 240
    try:
        while "step 1:" not in logs[0].read_text() and time.time() < deadline:
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            time.sleep(0.05)
    except BaseException:
        kill_all(procs)
        raise
    procs[1].send_signal(signal.SIGTERM)
    wait_pair(procs, timeout=240)
    texts = [f.read_text() for f in logs]
    assert [p.returncode for p in procs] == [0, 0], texts[1][-3000:]
    saved = [p.name for p in (w / "checkpoints").iterdir()]
    assert len(saved) == 1 and int(saved[0]) < STEPS, saved
    assert f"preempted: checkpoint at step {saved[0]} saved" in texts[0]
    assert not (w / "metrics.json").exists() and not (w / "export").exists()
    print(f"preempted at step {saved[0]} of {STEPS}")
    run_pair("dualenc.train", [args, args])
    a, b = exported(ref), exported(w)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    m = json.loads((w / "metrics.json").read_text())
    assert m["step"] == STEPS and not m["preempted"]
    assert m["log"][0]["step"] > int(saved[0])  # resumed, not restarted
    assert_one_of_each(w, steps=(int(saved[0]), STEPS))


@pytest.fixture
def fake_tpu_vm(monkeypatch):
    """A Cloud TPU VM slice as JAX's probes see it: 4 chips on PCI, metadata naming 4 workers
    (no TPU_WORKER_HOSTNAMES: that variable exists on GKE only). Returns the recorded calls."""
    import jax
    from jax._src import hardware_utils
    from jax._src.clusters import cloud_tpu_cluster

    calls = {"metadata": [], "initialize": []}

    def metadata(key):
        calls["metadata"].append(key)
        return "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5", 200

    for k in ("TPU_WORKER_HOSTNAMES", "TPU_SKIP_MDS_QUERY", "SLURM_NTASKS", *multihost._ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (4, None))
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", metadata)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls["initialize"].append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    monkeypatch.setattr(multihost, "_initialized", False)
    monkeypatch.setattr(multihost, "_already_initialized", lambda: False)
    return calls


def test_plain_tpu_vm_slice_joins_the_cluster(fake_tpu_vm):
    """A TPU VM pod slice (GCE metadata, no GKE variables) calls jax.distributed.initialize()
    with no arguments, so JAX's own TPU cluster detection connects the hosts."""
    assert multihost.tpu_vm_workers() == 4
    multihost.initialize()
    assert fake_tpu_vm["initialize"] == [{}]


class _Metadata(http.server.BaseHTTPRequestHandler):
    """A GCE metadata server for one TPU VM worker: `attributes` maps key -> value, 404 else."""

    attributes: dict[str, str] = {}

    def do_GET(self):
        key = self.path.rsplit("/", 1)[-1]
        ok = self.headers.get("Metadata-Flavor") == "Google" and key in self.attributes
        body = self.attributes[key].encode() if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tpu_vm_metadata():
    """Starts one metadata server per worker of a 2-host slice; returns their addresses."""
    servers = []
    for worker in range(2):
        attributes = {
            "worker-network-endpoints": "127.0.0.1,127.0.0.1",
            "agent-worker-number": str(worker),
            "tpu-env": "ACCELERATOR_TYPE: 'v5litepod-8'",
        }
        handler = type("Worker", (_Metadata,), {"attributes": attributes})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_tpu_vm_slice_trains_on_two_hosts_with_async_checkpoints(
    tmp_path_factory, train_data, tpu_vm_metadata, tmp_path
):
    """Two hosts of a plain Cloud TPU VM slice, as JAX sees one (chips on PCI, workers only in
    the GCE metadata, no DUALENC_* or GKE variables; `tests/fake_tpu_vm.py`): they find each
    other through `jax.distributed.initialize()`'s own TPU VM detection, train a (2,1) data
    mesh across both, save Orbax checkpoints asynchronously during the run, and export the
    bits of the explicitly launched two-process run. Without the slice detection each host
    trains alone and the 2-device mesh cannot be built."""
    ref = trained(tmp_path_factory, train_data, "(2,1)", 2)
    w = tmp_path / "slice"
    args = [
        *train_args(w, *train_data, "(2,1)"),
        "--config.checkpoint.every_steps=4",
        "--config.checkpoint.keep=3",
    ]
    port = str(_free_port())  # JAX's coordinator, on the first worker the metadata names
    cluster = [dict(GCE_METADATA_IP=m, JAX_COORDINATOR_PORT=port) for m in tpu_vm_metadata]
    res = run_pair("tests/fake_tpu_vm.py", [["dualenc.train", *args]] * 2, cluster=cluster)
    for i, (_, _, err) in enumerate(res):
        assert f"JAX distributed: process {i} of 2, 1 local / 2 global devices" in err, err[-3000:]
    a, b = exported(ref), exported(w)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # Async saves at steps 4 and 8 and the final one, each finalised (renamed into place).
    assert_one_of_each(w, steps=(4, 8, STEPS))


def test_no_tpu_chips_no_metadata_query(fake_tpu_vm, monkeypatch):
    """Off a TPU VM (no chips on PCI, or TPU_SKIP_MDS_QUERY) the metadata server is never asked
    and a single process starts alone."""
    from jax._src import hardware_utils

    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (0, None))
    assert not multihost.initialize()
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (4, None))
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    assert not multihost.initialize()
    assert fake_tpu_vm["metadata"] == [] and fake_tpu_vm["initialize"] == []


def test_sharded_encode_and_evaluate_two_processes_bit_identical(tiny_model, tiny_beir, tmp_path):
    """Issue 25: streamed encoding in shards of 8 rows, each host its contiguous half over its
    own device, equals one process bit for bit; shards deleted as by a kill are re-encoded alone
    and the result is unchanged; exact search with each host searching only its own shards
    (unshared cache dirs) gives one process's metrics and run."""
    corpus = tiny_beir / "corpus.jsonl"
    enc = ["--model", str(tiny_model), "--input", str(corpus), "--batch_size", "8"]
    enc += ["--max_length", "32", "--progress=false", "--shard_size", "8"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_single("dualenc.encode", [*enc, "--output_dir", str(one)], devices=1)
    res = run_pair("dualenc.encode", [[*enc, "--output_dir", str(two)]] * 2)
    assert "shards [0, 4) of 8: rows [0, 32) of 61" in res[0][2]
    assert "shards [4, 8) of 8: rows [32, 61) of 61" in res[1][2]

    def shard_bytes(d: Path) -> dict:
        return {p.name: p.read_bytes() for p in sorted(d.glob("emb-*.npy"))}

    ref = shard_bytes(one)
    assert len(ref) == 8 and shard_bytes(two) == ref
    assert (one / "ids.jsonl").read_text() == (two / "ids.jsonl").read_text()
    names = sorted(ref)
    for name in (names[1], names[6]):  # one shard of each host lost, as by a kill
        (two / name).unlink()
    res = run_pair("dualenc.encode", [[*enc, "--output_dir", str(two)]] * 2)
    assert all("3 of this host's 4 shards are done" in err for _, _, err in res)
    assert shard_bytes(two) == ref

    ev = ["--model", str(tiny_model), "--data", str(tiny_beir), "--split", "dev"]
    ev += ["--index", "exact", "--k", "20", "--batch_size", "8", "--max_length", "32"]
    ev += ["--progress=false", "--shard_size", "8"]
    run_single(
        "dualenc.evaluate",
        [*ev, "--output", str(one / "ev"), "--cache_dir", str(tmp_path / "c")],
        devices=1,
    )
    c0, c1 = tmp_path / "c0", tmp_path / "c1"
    run_pair(
        "dualenc.evaluate",
        [
            [*ev, "--output", str(two / "ev"), "--cache_dir", str(c0)],
            [*ev, "--output", str(tmp_path / "stray"), "--cache_dir", str(c1)],
        ],
    )
    m1 = json.loads((one / "ev" / "metrics.json").read_text())
    assert m1 == json.loads((two / "ev" / "metrics.json").read_text())
    assert (one / "ev" / "run.trec").read_text() == (two / "ev" / "run.trec").read_text()
    assert not (tmp_path / "stray").exists()
    held = [sorted(p.name[-10:-4] for p in c.glob("shards-*/emb-*.npy")) for c in (c0, c1)]
    assert held == [
        ["000000", "000001", "000002", "000003"],
        ["000004", "000005", "000006", "000007"],
    ]
    cached = {p.name: p.read_bytes() for p in (tmp_path / "c").glob("shards-*/emb-*.npy")}
    both = {p.name: p.read_bytes() for c in (c0, c1) for p in c.glob("shards-*/emb-*.npy")}
    assert cached == both


def test_chunked_evaluate_two_processes_equal_one(tiny_model, tiny_beir, tmp_path):
    """Issue 25: with --chunk_size every host counts the same windows from the streamed corpus
    and encodes only its own range of chunk rows (shards of 8 chunks, unshared cache dirs);
    MaxP over both hosts' shards gives one process's metrics and run."""
    ev = ["--model", str(tiny_model), "--data", str(tiny_beir), "--split", "dev"]
    ev += ["--index", "exact", "--k", "20", "--batch_size", "8", "--max_length", "32"]
    ev += ["--progress=false", "--shard_size", "8", "--chunk_size", "3", "--chunk_overlap", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_single("dualenc.evaluate", [*ev, "--output", str(one), "--nocache"], devices=1)
    c0, c1 = tmp_path / "c0", tmp_path / "c1"
    res = run_pair(
        "dualenc.evaluate",
        [
            [*ev, "--output", str(two), "--cache_dir", str(c0)],
            [*ev, "--output", str(tmp_path / "stray"), "--cache_dir", str(c1)],
        ],
    )
    info = json.loads((one / "info.json").read_text())["chunking"]
    n = info["chunks"]
    assert n > 2 * info["docs"] == 2 * 61  # really chunked
    assert all(f"of {n}" in err for _, _, err in res)  # both hosts split the same chunk rows
    assert json.loads((one / "metrics.json").read_text()) == json.loads(
        (two / "metrics.json").read_text()
    )
    assert (one / "run.trec").read_text() == (two / "run.trec").read_text()
    held = [len(list(c.glob("shards-*/emb-*.npy"))) for c in (c0, c1)]
    assert min(held) > 0 and sum(held) == -(-n // 8)  # each host encoded only its own chunks
