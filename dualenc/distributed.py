"""Multi-host start-up: one call before any other JAX work, a no-op on a single host.

Cloud TPU pods and SLURM GPU clusters are detected by `jax.distributed.initialize()` itself; other
clusters pass the coordinator explicitly through DUALENC_COORDINATOR_ADDRESS,
DUALENC_NUM_PROCESSES and DUALENC_PROCESS_ID (what launch/gpu_cluster.sh exports).
"""

from __future__ import annotations

import os

from absl import logging

_ENV = ("DUALENC_COORDINATOR_ADDRESS", "DUALENC_NUM_PROCESSES", "DUALENC_PROCESS_ID")


def cluster_env() -> dict | None:
    """The explicit coordinator settings from the environment, or None if none are set."""
    vals = {k: os.environ.get(k) for k in _ENV}
    if not any(vals.values()):
        return None
    missing = [k for k, v in vals.items() if not v]
    if missing:
        raise ValueError(f"multi-host launch needs all of {_ENV}; missing {missing}")
    return {
        "coordinator_address": vals["DUALENC_COORDINATOR_ADDRESS"],
        "num_processes": int(vals["DUALENC_NUM_PROCESSES"]),
        "process_id": int(vals["DUALENC_PROCESS_ID"]),
    }


def _auto_detectable() -> bool:
    """True on a TPU pod slice or inside a multi-task SLURM job."""
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def maybe_initialize() -> bool:
    """Calls jax.distributed.initialize when several hosts take part; returns whether it did."""
    import jax

    explicit = cluster_env()
    if explicit is not None:
        jax.distributed.initialize(**explicit)
    elif _auto_detectable():
        jax.distributed.initialize()
    else:
        return False
    logging.info(
        "JAX distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
