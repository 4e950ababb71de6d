"""Launch scripts: the dry-run commands, run here with stubs for the worker's Python, venv and pip,
carry a gs:// workdir intact into dualenc.train's real flag parsing; launch/venv.sh picks a
Python >= 3.11, never reuses a venv built for another extra, and builds once for hosts sharing a
filesystem; multi-host start-up settings."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dualenc import multihost

ROOT = Path(__file__).resolve().parent.parent
# Stands in for `.venv/bin/python -m dualenc.train ...` on a worker: dualenc.train's real absl
# flag parsing and config loading, with the trainer replaced by a recorder (and the DUALENC_*
# cluster settings recorded, then removed so that no coordinator is contacted).
RUNNER = r"""
import json, os, runpy, sys
from dualenc import multihost
from dualenc.training import loop
env = {k: os.environ.pop(k) for k in multihost._ENV if k in os.environ}

def record(config, workdir):
    with open(os.environ["STUB_OUT"], "a") as f:
        rec = {"workdir": workdir, "epath": str(multihost.epath(workdir)), "env": env,
               "batch_size": config.train.batch_size, "cwd": os.getcwd()}
        f.write(json.dumps(rec) + "\n")
    return {}

loop.train_and_evaluate = record
assert sys.argv[1:3] == ["-m", "dualenc.train"], sys.argv
sys.argv = ["dualenc.train", *sys.argv[3:]]
runpy.run_module("dualenc.train", run_name="__main__", alter_sys=True)
"""
# A worker's `pythonX.Y`: answers launch/venv.sh's version probe, and `-m venv DIR` makes a venv
# whose pip logs its arguments (sleeping STUB_PIP_SLEEP s, a slow install) and whose python runs
# $STUB_RUNNER with this environment's interpreter.
FAKE_PYTHON = """#!/bin/bash
echo "$0 $*" >> "$STUB_CALLS"
case "$1 $2" in
  "-c "*) echo {version} ;;
  "-m venv") mkdir -p "$3/bin" && cp "$STUB_DIR/venv_python" "$STUB_DIR/pip" "$3/bin/" &&
             mv "$3/bin/venv_python" "$3/bin/python" ;;
  *) echo "No module named $2" >&2; exit 1 ;;
esac
"""
VENV_PYTHON = """#!/bin/bash
[[ $1 == -c ]] && { echo 0.0.fake; exit 0; }
exec "$STUB_PY" "$STUB_RUNNER" "$@"
"""
PIP = """#!/bin/bash
echo "$PWD $*" >> "$STUB_PIP"
sleep "${STUB_PIP_SLEEP:-0}"
"""
# `uv` where a host has no Python >= 3.11: `python install 3.11` puts a fake 3.11 in its store.
FAKE_UV = """#!/bin/bash
echo "uv $*" >> "$STUB_CALLS"
case "$*" in
  "python install 3.11") mkdir -p "$STUB_DIR/uv" && cp "$STUB_DIR/python3.11" "$STUB_DIR/uv/" ;;
  "python find 3.11") [[ -x $STUB_DIR/uv/python3.11 ]] && echo "$STUB_DIR/uv/python3.11" ;;
  *) exit 2 ;;
esac
"""
# A trainer that only records who ran it: for the tests about venvs, not flags (no jax import).
RECORDER = """import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith("DUALENC_")}
with open(os.environ["STUB_OUT"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "env": env, "cwd": os.getcwd()}) + "\\n")
"""
# What the workers' commands and launch/venv.sh run, besides the Pythons a test puts on PATH.
TOOLS = "bash cat cp cut find flock gzip head mkdir mv rm sed sha256sum sleep tail tar".split()


def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _run(*args):
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT)


def _words(line: str) -> list[str]:
    """The words of a printf-%q-quoted command line, as bash reads them."""
    script = 'eval "a=($1)" && printf "%s\\0" "${a[@]}"'
    r = subprocess.run(["bash", "-c", script, "_", line], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\0")[:-1]


def _stub_env(tmp_path: Path, path: str) -> dict:
    """Env with stub files under tmp_path/stub; PATH is `path` (test-chosen Pythons first)."""
    d = tmp_path / "stub"
    _exe(d / "venv_python", VENV_PYTHON)
    _exe(d / "pip", PIP)
    _exe(d / "python3.11", FAKE_PYTHON.format(version="3.11"))
    _exe(tmp_path / "runner.py", RUNNER)
    _exe(tmp_path / "recorder.py", RECORDER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALENC_", "SLURM_", "TPU_"))}
    env.pop("PYTHON", None)
    env.update(
        PATH=path,
        STUB_DIR=str(d),
        STUB_PY=sys.executable,
        STUB_RUNNER=str(tmp_path / "runner.py"),
        STUB_RECORDER=str(tmp_path / "recorder.py"),
        STUB_OUT=str(tmp_path / "train.jsonl"),
        STUB_PIP=str(tmp_path / "pip.log"),
        STUB_CALLS=str(tmp_path / "calls.log"),
        JAX_PLATFORMS="cpu",
    )
    return env


@pytest.fixture
def stubs(tmp_path):
    """Env for running a printed remote command on this machine: fake python3.13 and python3 first
    on PATH (never this machine's, whose pip would go to the network)."""
    _pythons(tmp_path / "bin", python3_13="3.13", python3="3.13")
    return _stub_env(tmp_path, f"{tmp_path / 'bin'}:{os.environ['PATH']}")


@pytest.fixture
def host(tmp_path):
    """A host with no Python but the fakes a test adds to host["bin"] (PATH = bin, then tools)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for t in TOOLS:
        (tools / t).symlink_to(shutil.which(t))
    env = _stub_env(tmp_path, f"{tmp_path / 'bin'}:{tools}")
    env.update(STUB_RUNNER=env["STUB_RECORDER"])
    return {"bin": tmp_path / "bin", "env": env, "tmp": tmp_path}


def _pythons(bin_dir: Path, **versions: str) -> None:
    """Fake interpreters, e.g. python3="3.10" python3_11="3.11" (underscore for dot)."""
    for name, v in versions.items():
        _exe(bin_dir / name.replace("_", "."), FAKE_PYTHON.format(version=v))


def _bash(script: str, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Runs `script` with launch/venv.sh's functions sourced."""
    src = f"source {ROOT / 'launch/venv.sh'}; {script}"
    return subprocess.run(["bash", "-c", src], env=env, cwd=cwd, capture_output=True, text=True)


def _checkout(path: Path) -> Path:
    """What launch/venv.sh needs of a checkout: setup.py and launch/."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "setup.py", path / "setup.py")
    shutil.copytree(ROOT / "launch", path / "launch")
    return path


def _log(path) -> list[str]:
    return Path(path).read_text().splitlines() if Path(path).exists() else []


def _remote(command: str, env: dict, cwd: Path) -> list[dict]:
    """Runs a worker command here; returns what the stub trainer recorded so far."""
    r = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = Path(env["STUB_OUT"]).read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_tpu_pod_dry_run_reaches_the_trainer_with_the_gs_workdir(tmp_path, stubs):
    r = _run(
        "launch/tpu_pod.sh",
        *("--tpu", "pod1", "--zone", "us-central2-b", "--dry-run", "--"),
        *("--config", "configs/dpr_nq_tpu.py", "--workdir", "gs://b/run dir"),
        "--config.train.batch_size=256",
    )
    assert r.returncode == 0, r.stderr
    # No strip(): a quoted command may end in an escaped space.
    pack, copy, ssh = (_words(line) for line in r.stdout.splitlines())
    assert pack[:2] == ["git", "archive"] and pack[-1] == "HEAD"
    assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and pack[-2] in copy
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
    for words in (copy, ssh):
        assert "--worker=all" in words and words[words.index("--zone") + 1] == "us-central2-b"
    # The worker's command, run here: the shipped archive holds the configs; the stub .venv
    # python imports dualenc from this environment.
    home = tmp_path / "worker"
    home.mkdir()
    with tarfile.open(home / "dualenc-src.tar.gz", "w:gz") as tar:
        for name in ("configs", "launch", "setup.py"):
            tar.add(ROOT / name, arcname=name)
    (rec,) = _remote(ssh[ssh.index("--command") + 1], stubs, home)
    assert rec["workdir"] == rec["epath"] == "gs://b/run dir"  # not gs:/b/run dir
    assert rec["batch_size"] == 256 and rec["cwd"] == str(home / "dualenc") and rec["env"] == {}
    assert (tmp_path / "pip.log").read_text().split() == [
        str(home / "dualenc"),
        "install",
        "-q",
        ".[tpu]",
    ]


@pytest.mark.parametrize("workdir", ["/tmp/run", ""])
def test_tpu_pod_refuses_a_workdir_that_is_not_shared(workdir):
    args = ["--config", "configs/dpr_nq_tpu.py"] + ([f"--workdir={workdir}"] if workdir else [])
    r = _run("launch/tpu_pod.sh", "--tpu", "p", "--zone", "z", "--dry-run", "--", *args)
    assert r.returncode == 2 and "gs://" in r.stderr and not r.stdout


def test_gpu_cluster_dry_run_gives_each_host_its_process_id(tmp_path, stubs):
    repo = tmp_path / "repo"  # the checkout on every host, here without a .venv yet
    shutil.copytree(ROOT / "configs", _checkout(repo) / "configs")
    r = _run(
        "launch/gpu_cluster.sh",
        *("--hosts", "a,b,c", "--dir", str(repo), "--dry-run", "--"),
        *("--config", "configs/dpr_nq_tpu.py", "--workdir=gs://b/gpu"),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = _words(line)
        assert words[:2] == ["ssh", "abc"[i]] and len(words) == 3
        # dualenc.train's real flag parsing on host a; b and c only record (one jax import).
        env = stubs if i == 0 else {**stubs, "STUB_RUNNER": stubs["STUB_RECORDER"]}
        rec = _remote(words[2], env, tmp_path)[i]
        if i == 0:
            assert rec["workdir"] == rec["epath"] == "gs://b/gpu"
        else:
            assert rec["argv"][-3:] == ["--config", "configs/dpr_nq_tpu.py", "--workdir=gs://b/gpu"]
        assert rec["cwd"] == str(repo)
        assert rec["env"] == {
            "DUALENC_COORDINATOR_ADDRESS": "a:1234",
            "DUALENC_NUM_PROCESSES": "3",
            "DUALENC_PROCESS_ID": str(i),
        }
    # The first host created the venv with the cuda12 extra; the others reused it.
    assert (tmp_path / "pip.log").read_text().split() == [str(repo), "install", "-q", ".[cuda12]"]


@pytest.mark.parametrize("script", ["launch/tpu_pod.sh", "launch/gpu_cluster.sh"])
def test_launch_scripts_reject_missing_arguments(script):
    r = _run(script, "--dry-run")
    assert r.returncode == 2 and "required" in r.stderr


def test_extras_name_the_accelerator_runtimes():
    setup = (ROOT / "setup.py").read_text()
    assert '"tpu": ["jax[tpu]' in setup and '"cuda12": ["jax[cuda12]' in setup


def test_cluster_env(monkeypatch):
    for k in multihost._ENV:
        monkeypatch.delenv(k, raising=False)
    assert multihost.cluster_env() is None
    monkeypatch.setenv("DUALENC_COORDINATOR_ADDRESS", "h:1")
    with pytest.raises(ValueError, match="DUALENC_NUM_PROCESSES"):
        multihost.cluster_env()
    monkeypatch.setenv("DUALENC_NUM_PROCESSES", "4")
    monkeypatch.setenv("DUALENC_PROCESS_ID", "2")
    assert multihost.cluster_env() == {
        "coordinator_address": "h:1",
        "num_processes": 4,
        "process_id": 2,
    }


@pytest.mark.parametrize(
    "versions, picked",
    [
        ({"python3": "3.10", "python3_10": "3.10", "python3_11": "3.11"}, "python3.11"),
        ({"python3": "3.10", "python3_11": "3.11", "python3_13": "3.13"}, "python3.13"),
        ({"python3": "3.11", "python3_12": "3.12"}, "python3.12"),
        ({"python3": "3.12", "python3_10": "3.10"}, "python3"),
    ],
)
def test_pick_python_takes_the_first_of_3_13_3_12_3_11_python3_that_is_3_11_plus(
    host, versions, picked
):
    _pythons(host["bin"], **versions)
    r = _bash("pick_python", host["env"])
    assert r.returncode == 0 and r.stdout == f"{host['bin'] / picked}\n", r.stderr


def test_pick_python_honours_PYTHON_even_off_PATH_and_refuses_an_old_one(host):
    _pythons(host["bin"], python3_11="3.11")
    _pythons(host["tmp"] / "opt", py312="3.12", py310="3.10")
    py312, py310 = (str(host["tmp"] / "opt" / name) for name in ("py312", "py310"))
    r = _bash("pick_python", {**host["env"], "PYTHON": py312})
    assert r.returncode == 0 and r.stdout == f"{py312}\n", r.stderr
    # Asked for, an old one is an error (one line), not skipped for the python3.11 on PATH.
    r = _bash("pick_python", {**host["env"], "PYTHON": py310})
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert f"PYTHON={py310} is 3.10" in r.stderr


def test_a_3_10_host_gets_3_11_from_uv_or_fails_in_one_line(host):
    _pythons(host["bin"], python3="3.10", python3_10="3.10")
    repo = _checkout(host["tmp"] / "repo")
    # Install turned off: the whole venv.sh stops with one line, before any venv or pip.
    env = {**host["env"], "DUALENC_PYTHON_INSTALL": "0"}
    r = _bash("bash launch/venv.sh tpu", env, cwd=repo)
    assert r.returncode != 0 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "Python >= 3.11" in r.stderr and "python3 is 3.10" in r.stderr
    assert not (repo / ".venv-tpu" / "bin").exists() and not _log(host["env"]["STUB_PIP"])
    # No uv, and no pip to get it with (the fake python3 has no modules): one line again.
    r = _bash("pick_python", host["env"])
    assert r.returncode != 0 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "pip install --user uv failed" in r.stderr
    # uv present: it installs 3.11, which is picked.
    _exe(host["bin"] / "uv", FAKE_UV)
    r = _bash("pick_python", host["env"])
    assert r.returncode == 0 and r.stdout == f"{host['tmp'] / 'stub/uv/python3.11'}\n", r.stderr
    assert "uv python install 3.11" in _log(host["env"]["STUB_CALLS"])


def test_gpu_hosts_never_run_a_cpu_venv(host):
    _pythons(host["bin"], python3_11="3.11")
    repo = _checkout(host["tmp"] / "repo")
    _exe(repo / ".venv/bin/python", "#!/bin/bash\necho CPU jax from make setup >&2; exit 7\n")
    r = _run("launch/gpu_cluster.sh", "--hosts", "a", "--dir", str(repo), "--dry-run", "--", "-x")
    remote = _words(r.stdout)[2]
    pip = host["env"]["STUB_PIP"]
    (rec,) = _remote(remote, host["env"], host["tmp"])
    assert rec["argv"] == ["-m", "dualenc.train", "-x"] and rec["env"]["DUALENC_PROCESS_ID"] == "0"
    assert _log(pip) == [f"{repo} install -q .[cuda12]"]
    stamp = repo / ".venv-cuda12/.dualenc-stamp"
    key = stamp.read_text().splitlines()[0]
    assert key.startswith("extra=cuda12 setup.py=")

    def venv(change=None):
        """Runs venv.sh after `change`; whether it (re)installed."""
        if change:
            change()
        n = len(_log(pip))
        r = _bash("ensure_venv cuda12", host["env"], cwd=repo)
        assert r.returncode == 0, r.stderr
        sha = hashlib.sha256((repo / "setup.py").read_bytes()).hexdigest()
        assert stamp.read_text().splitlines()[0] == f"extra=cuda12 setup.py={sha}"
        return len(_log(pip)) > n

    assert not venv()  # built for this extra and these deps: reused
    assert venv(lambda: stamp.write_text(key.replace("cuda12", "cpu") + "\n"))  # CPU-stamped
    assert venv(lambda: stamp.unlink())  # an interrupted build (no stamp)
    assert venv(lambda: (repo / "setup.py").write_text("# new deps\n"))
    assert not venv()
    # Built, on a shared disk, by a host with an interpreter this one lacks: reported, not
    # rebuilt under the hosts running from it.
    _exe(repo / ".venv-cuda12/bin/python", "#!/nonexistent/python3.12\n")
    n = len(_log(pip))
    r = _bash("bash launch/venv.sh cuda12", host["env"], cwd=repo)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "does not run here" in r.stderr
    assert stamp.exists() and len(_log(pip)) == n


def _pack(src: Path, home: Path) -> None:
    """What launch/tpu_pod.sh copies to every worker's home."""
    with tarfile.open(home / "dualenc-src.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=".")


@pytest.mark.parametrize("script", ["tpu_pod", "gpu_cluster"])
def test_hosts_sharing_a_filesystem_install_once_and_all_start(host, script):
    _pythons(host["bin"], python3="3.11")
    home = host["tmp"] / "home"  # the home (tpu) or checkout (gpu) all hosts share
    if script == "tpu_pod":
        home.mkdir()
        _pack(_checkout(host["tmp"] / "src"), home)
        argv = ["--tpu", "t", "--zone", "z", "--dry-run", "--", "--workdir=gs://b/r"]
    else:
        _checkout(home)
        argv = ["--hosts", "a,b", "--dir", str(home), "--dry-run", "--", "--workdir=/r"]
    remotes = [_words(x)[-1] for x in _run(f"launch/{script}.sh", *argv).stdout.splitlines()]
    remotes = remotes[-1:] * 2 if script == "tpu_pod" else remotes  # the ssh to both workers
    env = {**host["env"], "STUB_PIP_SLEEP": "1"}  # slow enough that both hosts want to build
    procs = [
        subprocess.Popen(["bash", "-c", c], cwd=home, env=env, stderr=subprocess.PIPE, text=True)
        for c in remotes
    ]
    assert [p.wait(timeout=20) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    pip, out = host["env"]["STUB_PIP"], host["env"]["STUB_OUT"]
    assert len(_log(pip)) == 1 and len(_log(out)) == 2
    if script == "tpu_pod":
        # A relaunch with new code (same setup.py) unpacks it and keeps the venv.
        (host["tmp"] / "src/NEW").write_text("")
        _pack(host["tmp"] / "src", home)
        _remote(remotes[0], host["env"], home)
        assert (home / "dualenc/NEW").exists() and len(_log(pip)) == 1 and len(_log(out)) == 3
