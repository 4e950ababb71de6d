"""Launch scripts: the dry-run commands, run here with stubs for the worker's venv and pip, carry
a gs:// workdir intact into dualenc.train's real flag parsing; multi-host start-up settings."""

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
# `python3 -m venv .venv` on a worker: a .venv whose pip logs its arguments and whose python runs
# the recorder above with this environment's interpreter.
PYTHON3 = r"""#!/usr/bin/env bash
set -e
[[ "$1 $2 $3" == "-m venv .venv" ]] || { echo "stub python3: unexpected $*" >&2; exit 3; }
mkdir -p .venv/bin
printf '#!/usr/bin/env bash\necho "$PWD $*" >> "$STUB_PIP"\n' > .venv/bin/pip
printf '#!/usr/bin/env bash\nexec %s %s "$@"\n' "$STUB_PY" "$STUB_RUNNER" > .venv/bin/python
chmod +x .venv/bin/pip .venv/bin/python
"""


def _run(*args):
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT)


def _words(line: str) -> list[str]:
    """The words of a printf-%q-quoted command line, as bash reads them."""
    script = 'eval "a=($1)" && printf "%s\\0" "${a[@]}"'
    r = subprocess.run(["bash", "-c", script, "_", line], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\0")[:-1]


@pytest.fixture
def stubs(tmp_path):
    """Env for running a printed remote command on this machine: PATH with the stub python3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALENC_", "SLURM_", "TPU_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        STUB_PY=sys.executable,
        STUB_RUNNER=str(tmp_path / "runner.py"),
        STUB_OUT=str(tmp_path / "train.jsonl"),
        STUB_PIP=str(tmp_path / "pip.log"),
        JAX_PLATFORMS="cpu",
    )
    return env


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
        tar.add(ROOT / "configs", arcname="configs")
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
    shutil.copytree(ROOT / "configs", repo / "configs")
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
        rec = _remote(words[2], stubs, tmp_path)[i]
        assert rec["workdir"] == rec["epath"] == "gs://b/gpu" and rec["cwd"] == str(repo)
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
