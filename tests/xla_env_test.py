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
