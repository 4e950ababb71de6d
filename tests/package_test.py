"""An installable package: the wheel, installed into a fresh venv, runs the CLIs from anywhere.

The fresh venv reuses this environment's dependencies through a `.pth` path line (a plain path
entry: the editable-install hook of .venv, which would map `dualenc` back to this checkout, is
not executed there), so only the wheel can provide `dualenc`.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "README.md", "LICENSE", "dualenc")


def _run(cmd, cwd, env=None, timeout=300, ok=(0,)):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode in ok, f"{cmd}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding only the dualenc wheel + deps path, a directory outside
    the checkout to run it from)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"  # build from a copy: no build/ or egg-info in the shared checkout
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "wheels", src], tmp)
    (wheel,) = (tmp / "wheels").glob("dualenc-*.whl")
    venv = tmp / "venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    _run([base, "-m", "venv", "--without-pip", venv], tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp))
    site = Path(str(site).strip())
    _run([*pip, "install", "--no-deps", "--target", site, wheel], tmp)
    (site / "dualenc_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return py, elsewhere, wheel


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DUALENC_DATA_DIR")}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONNOUSERSITE": "1"}


def test_wheel_holds_the_package_and_its_defaults_only(installed):
    names = zipfile.ZipFile(installed[2]).namelist()
    assert "dualenc/retrieval/eval_config.py" in names and "dualenc/train.py" in names
    assert "dualenc/index/scann_index.py" in names and "dualenc/models/bert.py" in names
    assert "dualenc/kernels/attention.cc" in names  # the CPU attention kernel's source
    for page in ("index.html", "app.js", "style.css"):  # dualenc.serve's search page
        assert f"dualenc/serve/static/{page}" in names
    assert not [n for n in names if n.startswith(("configs/", "tests/", "benchmarks/"))]


def test_installed_package_comes_from_the_wheel(installed):
    py, elsewhere, _ = installed
    code = (
        "import importlib.util, dualenc\n"
        "from dualenc.retrieval.evaluate import default_config\n"
        "from dualenc.io import data_dir\n"
        "print(dualenc.__file__)\n"
        "print(importlib.util.find_spec('configs'))\n"
        "print(default_config().index, default_config().scann.brute_force_below)\n"
        "print(data_dir())\n"
    )
    out = _run([py, "-c", code], elsewhere, _env()).splitlines()
    assert out[0].startswith(str(py.parent.parent)) and "site-packages" in out[0], out[0]
    assert out[1] == "None"  # the checkout's configs/ is not importable
    assert out[2] == "exact 20000"
    assert out[3] == str(elsewhere.parent / "shared" / "data")  # ../shared/data of the CWD


@pytest.mark.parametrize(
    "module,flags",
    [
        ("dualenc.evaluate", ("--index", "--data", "--model")),
        ("dualenc.train", ("--workdir",)),
        ("dualenc.serve", ("--index", "--rerank_model", "--host")),
    ],
)
def test_cli_help_from_another_directory(installed, module, flags):
    py, elsewhere, _ = installed
    out = _run([py, "-m", module, "--help"], elsewhere, _env(), ok=(0, 1))  # absl --help: 1
    for flag in flags:
        assert flag in out, (module, flag, out[-2000:])
