"""Compile-only TPU and GPU targets: devices that XLA compiles for on a CPU host.

A target names a slice (`tpu:v5e-16`) or a GPU node (`gpu:h100x8`); `devices(target)` gives its
compile-only devices (libtpu's topology for TPUs, a `GpuTargetConfigProto` shipped in
`gpu_specs/` for GPUs, which needs the CUDA plugin of `jax[cuda12]` installed but no GPU). The
chip figures are the vendors' dense bf16 peaks, HBM per chip and bandwidth (../shared/NOTES.md),
for roofline step times and MFU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # tpu:v5e-16, gpu:h100x8
    platform: str  # tpu | gpu
    chip: Chip
    num_chips: int
    topology: str  # libtpu topology name ('v5e:4x4') or GPU 'hosts x nodes x gpus' ('1x1x8')
    chips_per_host: tuple[int, int, int] = (2, 2, 1)
    gpu_spec: str = ""  # file under gpu_specs/
    chip_config: str = "default"  # v4: 'megacore' (one device per chip, as a v4 VM shows them)


V5E = Chip("TPU v5e", 197e12, 16 * GiB, 819e9)
V4 = Chip("TPU v4", 275e12, 32 * GiB, 1228e9)
V5P = Chip("TPU v5p", 459e12, 95 * GiB, 2765e9)
H100 = Chip("H100 SXM 80GB", 989e12, 80 * 10**9, 3.35e12)
A100 = Chip("A100 SXM 80GB", 312e12, 80 * 10**9, 2.04e12)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("tpu:v5e-8", "tpu", V5E, 8, "v5e:2x4", (2, 4, 1)),
        Target("tpu:v5e-16", "tpu", V5E, 16, "v5e:4x4"),
        Target("tpu:v5e-256", "tpu", V5E, 256, "v5e:16x16"),
        Target(
            "tpu:v4-32", "tpu", V4, 16, "v4:2x2x4", chip_config="megacore"
        ),  # 32 cores = 16 chips
        Target("tpu:v5p-8", "tpu", V5P, 4, "v5p:2x2x1", (2, 2, 1)),  # 8 cores = 4 chips
        Target("gpu:h100x8", "gpu", H100, 8, "1x1x8", gpu_spec="h100_sxm.txtpb"),
        Target("gpu:a100x8", "gpu", A100, 8, "1x1x8", gpu_spec="a100_sxm.txtpb"),
    )
}


def get(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}: one of {', '.join(TARGETS)}") from None


class TargetUnavailable(RuntimeError):
    """This host cannot compile for the target (its compiler plugin is not installed)."""


@functools.cache
def devices(name: str) -> tuple:
    """The target's compile-only devices (cached: a topology is built once per process)."""
    from jax.experimental import topologies

    t = get(name)
    if t.platform == "tpu":
        # libtpu asks the (absent) TPU VM metadata for these and prints warnings without them
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", t.name.split(":")[1])
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        # compiling touches no chip: let several processes (tests, a second compile) load it
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        try:
            topo = topologies.get_topology_desc(
                platform="tpu",
                topology_name=t.topology,
                chip_config_name=t.chip_config,
                chips_per_host_bounds=t.chips_per_host,
                num_slices=1,
            )
        except Exception as e:  # noqa: BLE001 - no libtpu, or one that lacks this chip
            raise TargetUnavailable(
                f"{t.name}: TPU compile support missing ({type(e).__name__}: {e}); "
                'pip install "jax[tpu]" (make setup does)'
            ) from None
    else:
        spec = (Path(__file__).parent / "gpu_specs" / t.gpu_spec).read_text()
        try:
            topo = topologies.get_topology_desc("", "cuda", target_config=spec, topology=t.topology)
        except Exception as e:  # noqa: BLE001 - the CUDA plugin is not installed
            raise TargetUnavailable(
                f"{t.name}: GPU compile support missing ({type(e).__name__}: {e}); "
                'pip install "jax[cuda12]" (~5 GB; make compile-gpu does)'
            ) from None
    found = tuple(topo.devices)
    if len(found) != t.num_chips:
        raise TargetUnavailable(f"{t.name}: topology gave {len(found)} devices, not {t.num_chips}")
    return found
