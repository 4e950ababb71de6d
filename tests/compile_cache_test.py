"""Every command gets JAX's persistent compilation cache: where it goes, how to turn it off."""

import os
import subprocess
import sys

CODE = """
import jax
from dualenc import cli

def main(argv):
    print(jax.config.jax_compilation_cache_dir)

cli.run(main)
"""


def _cache_dir(tmp_path, **env) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DUALENC_", "JAX_COMP"))}
    base.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **env)
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=base, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_commands_use_a_persistent_compilation_cache(tmp_path):
    assert _cache_dir(tmp_path) == str(tmp_path / "xdg" / "dualenc" / "xla")
    assert _cache_dir(tmp_path, DUALENC_XLA_CACHE=str(tmp_path / "c")) == str(tmp_path / "c")
    assert _cache_dir(tmp_path, DUALENC_XLA_CACHE="0") == "None"
    mine = str(tmp_path / "mine")
    assert _cache_dir(tmp_path, JAX_COMPILATION_CACHE_DIR=mine) == mine  # the user's wins
