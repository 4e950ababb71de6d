"""XLA:CPU flags that dualenc sets for itself before JAX starts (documented, overridable).

Measured on jaxlib 0.10.2 (benchmarks/README.md): XLA's default YNNPACK fusions of reductions and
elementwise ops make the MiniLM forward ~1.5x slower than with them off (3.8k -> 5.7k tok/s at
32 x 256 on a 2-core CPU), with parity unchanged. Flags only fill in what the user's XLA_FLAGS
does not already name; DUALENC_XLA_DEFAULTS=0 turns the defaults off. GPU/TPU ignore xla_cpu_*.
Also tried on top of it, none adopted (benchmarks/README.md, "Flag sweep"): oneDNN, XNN graph
fusion GREEDY, XNNPACK off, the tree-reduction rewriter off; no win beyond the noise.
"""

from __future__ import annotations

import os

CPU_DEFAULTS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_defaults(xla_flags: str, defaults: tuple[str, ...] = CPU_DEFAULTS) -> str:
    """`xla_flags` plus each default whose flag name it does not set already."""
    named = {_name(f) for f in xla_flags.split()}
    extra = [f for f in defaults if _name(f) not in named]
    return " ".join([xla_flags.strip(), *extra]).strip()


def apply_defaults() -> None:
    """Adds the defaults to $XLA_FLAGS (read by XLA when the first backend starts)."""
    if os.environ.get("DUALENC_XLA_DEFAULTS", "1") == "0":
        return
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
