"""The one multi-host layer: start-up, process-0 writes, barriers, gathers and epath workdirs.

Every CLI calls `initialize()` first. Cloud TPU pods and SLURM GPU clusters are detected by
`jax.distributed.initialize()` itself; other clusters pass the coordinator explicitly through
DUALENC_COORDINATOR_ADDRESS, DUALENC_NUM_PROCESSES and DUALENC_PROCESS_ID (what
launch/gpu_cluster.sh exports). Everything here is a cheap no-op with a single process, so library
code calls it unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath as _epath
from jax.experimental import multihost_utils

_ENV = ("DUALENC_COORDINATOR_ADDRESS", "DUALENC_NUM_PROCESSES", "DUALENC_PROCESS_ID")
_initialized = False


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
    """True on a multi-host TPU slice (GKE, or a plain Cloud TPU VM slice) or inside a
    multi-task SLURM job: where `jax.distributed.initialize()` finds the others by itself."""
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return tpu_vm_workers() > 1


def tpu_vm_workers() -> int:
    """Hosts of this Cloud TPU VM slice from the GCE metadata (`worker-network-endpoints`), 0 off
    a TPU VM. A plain TPU VM slice sets no environment variable that names its workers, so
    without this check its hosts would each train alone. The metadata server is asked only where
    TPU chips are attached over PCI, so no other machine waits on it."""
    if os.environ.get("TPU_SKIP_MDS_QUERY"):
        return 0
    try:
        from jax._src import hardware_utils  # noqa: PLC0415 - JAX's own TPU VM probes
        from jax._src.clusters import cloud_tpu_cluster  # noqa: PLC0415

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        if not chips:
            return 0
        endpoints, code = cloud_tpu_cluster.get_metadata("worker-network-endpoints")
    except Exception as e:  # noqa: BLE001 - no metadata: treat as one host, say so
        logging.warning("TPU VM slice detection failed (%s): running as one host", e)
        return 0
    if code != 200:
        return 0
    return len([w for w in str(endpoints).split(",") if w.strip()])


def _client():
    """The coordination-service client of jax.distributed, or None (private state: best effort)."""
    try:
        from jax._src import distributed  # noqa: PLC0415 - private, read only here

        return distributed.global_state.client
    except (ImportError, AttributeError):
        return None


def _already_initialized() -> bool:
    return _client() is not None


def initialize() -> bool:
    """Joins the JAX cluster when several processes take part; returns whether it did.

    Idempotent. Selects gloo CPU collectives first, so that cross-process collectives also work
    on CPU (tests, CPU clusters); the setting does not affect TPU/GPU backends.
    """
    global _initialized
    if _initialized or _already_initialized():
        _initialized = True
        return jax.process_count() > 1
    explicit = cluster_env()
    if explicit is None and not _auto_detectable():
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**(explicit or {}))
    _initialized = True
    logging.info(
        "JAX distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """True on process 0, the only process that writes exports, metrics, reports and runs."""
    return jax.process_index() == 0


def host_range(n: int, process_index: int | None = None, process_count: int | None = None) -> range:
    """This host's contiguous share of rows [0, n): hosts in order cover every row exactly once
    and differ in size by at most one, so each host reads (and encodes) only its own rows."""
    i = jax.process_index() if process_index is None else int(process_index)
    c = jax.process_count() if process_count is None else int(process_count)
    if n < 0 or c < 1 or not 0 <= i < c:
        raise ValueError(f"host_range(n={n}, process_index={i}, process_count={c})")
    return range(n * i // c, n * (i + 1) // c)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (same name everywhere)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


_any_calls = 0
_ANY_TIMEOUT_MS = 30 * 60 * 1000
_WAIT_TIMEOUT_MS = 24 * 3600 * 1000
_waits = 0


def wait_all(name: str) -> None:
    """A barrier for hosts that arrive far apart (one host encodes more shards, process 0 builds
    an index): the coordination service's barrier, which waits up to a day. A device barrier
    (`barrier`) dies when the first gloo collective waits over 30 s for its peer."""
    global _waits
    if jax.process_count() == 1:
        return
    client, n = _client(), _waits
    _waits += 1
    if client is None:
        barrier(name)
        return
    client.wait_at_barrier(f"dualenc_wait_{n}_{name}", _WAIT_TIMEOUT_MS)


def any_host(flag: bool) -> bool:
    """True on every process if any process passes True; every process must call it equally often.

    Goes through the coordination service (a key per True flag + a barrier), not the devices, so
    calling it at every step does not wait for the step in flight; falls back to a device
    all-gather where that service is not reachable.
    """
    global _any_calls
    if jax.process_count() == 1:
        return bool(flag)
    client, n = _client(), _any_calls
    _any_calls += 1
    if client is None:
        flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32))
        return bool(np.asarray(flags).any())
    prefix = f"dualenc/any_host/{n}/"
    if flag:  # only True flags are written: the usual answer leaves nothing in the store
        client.key_value_set(prefix + str(jax.process_index()), "1")
    client.wait_at_barrier(f"dualenc_any_host_{n}", _ANY_TIMEOUT_MS)
    return bool(client.key_value_dir_get(prefix))


def _leaf_to_host(x):
    if isinstance(x, jax.Array):
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x


def to_host(tree: Any) -> Any:
    """Full numpy values, on every host, of a pytree of (possibly cross-host-sharded) arrays.

    A collective when some leaf spans other hosts' devices: every process must call it.
    """
    return jax.tree.map(_leaf_to_host, tree)


def allgather(x: np.ndarray) -> np.ndarray:
    """(processes, *x.shape): every process's `x` (same shape everywhere), on every process, in
    process order. For small host values (per-host top-k lists), not for embeddings."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def epath(p: str | os.PathLike) -> _epath.Path:
    """An `etils.epath.Path` that keeps `gs://` (and other URL schemes) intact."""
    if isinstance(p, _epath.Path):
        return p
    s = os.fspath(p)
    if s.startswith("file://"):
        s = s[len("file://") :]
    return _epath.Path(s)


def is_local(p: str | os.PathLike) -> bool:
    """True for plain filesystem paths (no `gs://`-style scheme)."""
    s = os.fspath(p)
    return "://" not in s or s.startswith("file://")


def write_on_main(fn, *args, barrier_name: str | None = None, **kwargs):
    """Runs `fn(*args, **kwargs)` on process 0 only, then lets every process pass a barrier.

    Returns fn's result on process 0 and None elsewhere.
    """
    out = fn(*args, **kwargs) if is_main() else None
    barrier(barrier_name or f"write_on_main:{getattr(fn, '__name__', 'fn')}")
    return out
