"""Launch scripts (dry run) and multi-host start-up settings."""

import subprocess
from pathlib import Path

import pytest

from dualenc import distributed

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT)


def test_tpu_pod_dry_run_prints_the_command_for_all_workers():
    r = _run(
        "launch/tpu_pod.sh",
        "--tpu",
        "pod1",
        "--zone",
        "us-central2-b",
        "--dry-run",
        "--",
        "--config",
        "configs/dpr_nq_tpu.py",
        "--workdir",
        "gs://b/run",
    )
    assert r.returncode == 0, r.stderr
    assert "--worker=all" in r.stdout and "dualenc.train" in r.stdout
    assert "configs/dpr_nq_tpu.py" in r.stdout and "gs://b/run" in r.stdout


def test_gpu_cluster_dry_run_gives_each_host_its_process_id():
    r = _run("launch/gpu_cluster.sh", "--hosts", "a,b,c", "--dry-run", "--", "--config", "x.py")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert f"DUALENC_PROCESS_ID={i}" in line and "DUALENC_NUM_PROCESSES=3" in line
        assert "DUALENC_COORDINATOR_ADDRESS=a:1234" in line


@pytest.mark.parametrize("script", ["launch/tpu_pod.sh", "launch/gpu_cluster.sh"])
def test_launch_scripts_reject_missing_arguments(script):
    r = _run(script, "--dry-run")
    assert r.returncode == 2 and "required" in r.stderr


def test_cluster_env(monkeypatch):
    for k in distributed._ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.cluster_env() is None
    monkeypatch.setenv("DUALENC_COORDINATOR_ADDRESS", "h:1")
    with pytest.raises(ValueError, match="DUALENC_NUM_PROCESSES"):
        distributed.cluster_env()
    monkeypatch.setenv("DUALENC_NUM_PROCESSES", "4")
    monkeypatch.setenv("DUALENC_PROCESS_ID", "2")
    assert distributed.cluster_env() == {
        "coordinator_address": "h:1",
        "num_processes": 4,
        "process_id": 2,
    }
