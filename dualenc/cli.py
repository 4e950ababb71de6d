"""The command lines' shared flag parsing: bad input is one `error:` line and exit code 2.

absl reports a bad flag value or a missing required flag as 'FATAL Flags parsing error' with exit
code 1, and a config file whose `get_config` raises, or an unknown `--config.a.b` key, as a
traceback. `run(main)` is `absl.app.run` with a parser that turns each into one line naming the
flag or key, and exit code 2, before anything runs. Every command also gets JAX's persistent
compilation cache (`enable_compilation_cache`), so a rerun, a resume or another host skips the
compiles it has already paid for.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import jax
from absl import app, flags

from dualenc.inference.corpus_cache import default_cache_dir
from dualenc.models import target

PRECISION_HELP = (
    "XLA's float32 matmul precision: default (TPU and NVIDIA GPUs use faster reduced-precision "
    "passes) | high | highest (float32 parity with PyTorch) | bfloat16 | tensorfloat32 | float32"
)


def define_matmul_precision():
    """The --matmul_precision flag of the inference commands (train: model.matmul_precision)."""
    return flags.DEFINE_enum("matmul_precision", "default", list(target.PRECISIONS), PRECISION_HELP)


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if any(ln.startswith("Traceback") for ln in lines):  # get_config raised: say what
            lines = [lines[0].rstrip(":"), lines[-1]]
        fail("error: " + " ".join(lines) + " (--helpfull lists the flags)")
    except (AttributeError, KeyError) as e:  # ml_collections: unknown key in a locked config
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        raw = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\", "")
        detail = " ".join(raw.replace("'", "").split())
        fail(f"error: unknown config key ({detail}) in overrides {bad}")


def enable_compilation_cache() -> Path | None:
    """JAX's persistent compilation cache at $DUALENC_XLA_CACHE, else <cache dir>/xla
    ($XDG_CACHE_HOME/dualenc/xla); off with DUALENC_XLA_CACHE=0, and left alone when the user
    set one (JAX_COMPILATION_CACHE_DIR). Returns the directory in use."""
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    where = os.environ.get("DUALENC_XLA_CACHE", "")
    if where == "0":
        return None
    path = Path(where).expanduser() if where else default_cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def run(main) -> None:
    """absl.app.run(main) with `parse_flags`, after `enable_compilation_cache`."""
    enable_compilation_cache()
    app.run(main, flags_parser=parse_flags)
