"""XLA:CPU flags that dualenc sets for itself before JAX starts (documented, overridable).

Measured on jaxlib 0.10.2 (benchmarks/README.md): XLA's default YNNPACK fusions of reductions and
elementwise ops make the MiniLM forward ~1.5x slower than with them off (3.8k -> 5.7k tok/s at
32 x 256 on a 2-core CPU), with parity unchanged. Flags only fill in what the user's XLA_FLAGS
does not already name; DUALENC_XLA_DEFAULTS=0 turns the defaults off. They are CPU flags, so they
are set only where JAX runs on CPU: not when JAX_PLATFORMS names no cpu, nor on a host with TPU
chips or an NVIDIA GPU (unless JAX_PLATFORMS pins cpu), whose XLA builds may not know them; and a
flag the installed jaxlib does not know is dropped with one log line, since XLA aborts the process
on an unknown flag.
Also tried on top of it, none adopted (benchmarks/README.md, "Flag sweep"): oneDNN, XNN graph
fusion GREEDY, XNNPACK off, the tree-reduction rewriter off; no win beyond the noise.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import mmap
import os
from pathlib import Path

CPU_DEFAULTS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_defaults(xla_flags: str, defaults: tuple[str, ...] = CPU_DEFAULTS) -> str:
    """`xla_flags` plus each default whose flag name it does not set already."""
    named = {_name(f) for f in xla_flags.split()}
    extra = [f for f in defaults if _name(f) not in named]
    return " ".join([xla_flags.strip(), *extra]).strip()


def runs_on_cpu(platforms: str, accelerator: bool) -> bool:
    """Whether JAX's backend will be CPU, from JAX_PLATFORMS `platforms` (its first entry wins;
    '' = JAX's choice: an attached `accelerator` wins over the CPU)."""
    names = [p.strip() for p in platforms.split(",") if p.strip()]
    return names[0] == "cpu" if names else not accelerator


def accelerator_attached() -> bool:
    """TPU chips on PCI or a visible NVIDIA GPU, by JAX's own probes (`jax/_src/hardware_utils.py`,
    standard library only), loaded from its file: importing the jax package here would add a
    second to every `import dualenc`, commands that never start JAX included."""
    spec = importlib.util.find_spec("jax")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = Path(next(iter(spec.submodule_search_locations))) / "_src" / "hardware_utils.py"
    probe = importlib.util.spec_from_file_location("_dualenc_jax_hardware_probe", path)
    if probe is None or probe.loader is None:
        return False
    hardware_utils = importlib.util.module_from_spec(probe)
    try:
        probe.loader.exec_module(hardware_utils)
        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        return chips > 0 or hardware_utils.has_visible_nvidia_gpu()
    except (OSError, ImportError, AttributeError):
        return False


def jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's XLA defines `flag` (its name is in the XLA library)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    name = _name(flag).lstrip("-").encode()
    for lib in glob.glob(str(Path(next(iter(spec.submodule_search_locations))) / "*.so")):
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def usable_defaults(defaults: tuple[str, ...] = CPU_DEFAULTS, knows=jaxlib_knows) -> tuple:
    """The defaults the installed jaxlib knows; each unknown one is dropped with a log line."""
    kept = []
    for flag in defaults:
        if knows(flag):
            kept.append(flag)
        else:
            logging.getLogger("dualenc").warning(
                "XLA flag %s unknown to this jaxlib: not set", flag
            )
    return tuple(kept)


def pin_cpu(environ=os.environ, accelerator=None) -> bool:
    """Sets JAX_PLATFORMS=cpu where it is unset and no accelerator is attached (no TPU chip, no
    NVIDIA GPU by JAX's probes, no AMD GPU's /dev/kfd, which those probes do not see). Why: JAX
    starts every installed plugin, and libtpu (which `make setup` installs for compile-only TPU
    targets) then probes for chips and prints a screen of warnings on every command. TPU and GPU
    compile-only topologies (`dualenc.compile`) work with the CPU pinned. Returns whether it
    pinned."""
    if environ.get("JAX_PLATFORMS", "").strip() or os.path.exists("/dev/kfd"):
        return False
    if accelerator_attached() if accelerator is None else accelerator:
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    return True


def apply_defaults() -> None:
    """Adds the defaults to $XLA_FLAGS (read by XLA when the first backend starts), where JAX
    will run on CPU."""
    accelerator = accelerator_attached()
    pin_cpu(accelerator=accelerator)
    if os.environ.get("DUALENC_XLA_DEFAULTS", "1") == "0":
        return
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if not runs_on_cpu(platforms, not platforms.strip() and accelerator):
        return
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""), usable_defaults())
