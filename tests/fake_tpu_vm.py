"""Runs a module as a host of a Cloud TPU VM slice would, on a CPU machine.

    GCE_METADATA_IP=127.0.0.1:PORT python tests/fake_tpu_vm.py dualenc.train ARGS...

On a plain TPU VM slice nothing in the environment names the other hosts: JAX's probes see TPU
chips on PCI and ask the GCE metadata server (`worker-network-endpoints`, `agent-worker-number`)
who the workers are. Here the chips are faked (the probes are patched before the module runs) and
the metadata server is whatever answers at $GCE_METADATA_IP (the test starts one per process),
so `multihost.initialize()` and `jax.distributed.initialize()` take the real TPU VM code path,
while the computation itself stays on CPU (JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import os
import runpy
import sys

from jax._src import hardware_utils  # imports jax: cloud_tpu_init has run, finding no chips
from jax._src.clusters import cloud_tpu_cluster

hardware_utils.num_available_tpu_chips_and_device_id = lambda: (4, None)
cloud_tpu_cluster.running_in_cloud_tpu_vm = True
os.environ.pop("TPU_SKIP_MDS_QUERY", None)  # cloud_tpu_init sets it on a host without chips

if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
