"""dualenc's own XLA:CPU defaults: added once, never over a user's choice, and in effect."""

import os
import subprocess
import sys

from dualenc import xla_env


def test_defaults_fill_only_missing_flags():
    assert xla_env.with_defaults("") == "--xla_cpu_experimental_ynn_fusion_type="
    user = "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_env.with_defaults(user) == user  # the user's value wins
    once = xla_env.with_defaults("--a=1")
    assert xla_env.with_defaults(once) == once  # idempotent


def test_importing_dualenc_sets_flags_before_jax_starts():
    code = "import os, dualenc, jax; jax.devices(); print(os.environ['XLA_FLAGS'])"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DUALENC_XLA_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--xla_cpu_experimental_ynn_fusion_type=" in out.stdout
    env["DUALENC_XLA_DEFAULTS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "ynn_fusion" not in out.stdout


def test_cpu_flags_only_where_jax_runs_on_cpu():
    """JAX_PLATFORMS' first entry wins; unset, an attached TPU / GPU means no CPU flags (that
    backend's XLA may not know them, and XLA aborts on an unknown flag)."""
    assert xla_env.runs_on_cpu("", accelerator=False)
    assert not xla_env.runs_on_cpu("", accelerator=True)
    assert xla_env.runs_on_cpu("cpu", accelerator=True)
    assert not xla_env.runs_on_cpu("tpu,cpu", accelerator=False)
    assert not xla_env.runs_on_cpu("cuda", accelerator=False)


def test_unknown_flag_is_dropped_with_a_log_line(caplog):
    """A default the installed jaxlib does not define is never set (it would abort XLA)."""
    flags = ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_no_such_flag_anywhere=1")
    with caplog.at_level("WARNING", logger="dualenc"):
        kept = xla_env.usable_defaults(flags)
    assert kept == flags[:1]  # this jaxlib knows the first: measured with it
    assert "xla_cpu_no_such_flag_anywhere" in caplog.text


def test_no_cpu_flags_when_jax_platforms_names_an_accelerator():
    code = "import os, dualenc; print(os.environ.get('XLA_FLAGS', ''))"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DUALENC_XLA_DEFAULTS")}
    env["JAX_PLATFORMS"] = "tpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ynn_fusion" not in out.stdout


def test_import_dualenc_does_not_start_jax_and_probes_without_it():
    """The accelerator probe runs JAX's hardware_utils from its file: `import dualenc` stays
    free of the jax package (a second of start-up for every command otherwise)."""
    code = "import sys, dualenc; print('jax' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS",)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert xla_env.accelerator_attached() is False  # this machine (and CI) has no TPU / GPU


def test_jax_platforms_pinned_to_cpu_only_without_an_accelerator():
    """With libtpu installed (make setup), an unpinned JAX probes for TPU chips and prints its
    warnings on every command; dualenc pins cpu only where nothing is attached and the user
    chose nothing."""
    env: dict[str, str] = {}
    assert xla_env.pin_cpu(env, accelerator=False) and env["JAX_PLATFORMS"] == "cpu"
    env = {"JAX_PLATFORMS": "tpu"}
    assert not xla_env.pin_cpu(env, accelerator=False) and env["JAX_PLATFORMS"] == "tpu"
    env = {}
    assert not xla_env.pin_cpu(env, accelerator=True) and "JAX_PLATFORMS" not in env
    code = "import dualenc, jax; jax.devices()"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "TPU_WORKER_HOSTNAMES" not in out.stderr  # libtpu's start-up noise
