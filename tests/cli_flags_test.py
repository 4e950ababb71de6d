"""Every command line reports a bad flag, a missing required flag or an unknown config key as one
`error:` line with exit code 2, never absl's 'FATAL Flags parsing error' (exit 1) or a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["dualenc.evaluate", "--k=abc"], "--k=abc"),
        (["dualenc.evaluate", "--config=configs/eval/default.py", "--config.bogus=1"], "bogus"),
        (["dualenc.study", "--config=configs/study/scifact.py", "--config.bogus=1"], "bogus"),
        (["dualenc.classify", "--data=x.tsv", "--output=o"], "--model"),
        (["dualenc.mine", "--num_negatives=many"], "--num_negatives"),
        (["dualenc.encode", "--batch_size=0"], "--batch_size"),
        (["dualenc.search", "--k=ten"], "--k=ten"),
        (["dualenc.export", "--bogus=1"], "bogus"),
        (["dualenc.build_tfds", "--src=x", "--out=o", "--format=parquet"], "--format"),
    ],
    ids=lambda a: a[0] if isinstance(a, list) else None,
)
def test_bad_flags_are_one_line_exit_2(tmp_path, args, needle):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr
