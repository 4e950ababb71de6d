"""What a program is being compiled for: the platform and device count of its mesh, and the
matmul precision.

Why not `jax.default_backend()`: `python -m dualenc.compile` traces a step on this CPU host for a
TPU or GPU topology, and a model that asked the host would take the CPU paths (native kernels,
chunked attention) into a TPU program. Whoever lowers a step for a mesh says so with
`compiling_for(mesh)`; code that picks a path asks `platform()` / `device_count()`, which fall back
to JAX's default devices (what a plain `jax.jit` call runs on) outside such a block. The block
must cover the trace (`.lower()` or the first call): a jitted function caches its trace by
shapes, not by this context, so each target gets its own `jax.jit` object.

Matmul precision: XLA's default on TPU (and TF32 on NVIDIA) multiplies float32 operands in
reduced precision; the float32 parity with PyTorch (≤ 1e-5) holds at 'highest', and on CPU at any
setting. `model.matmul_precision` / `--matmul_precision` set it process-wide (`set_precision`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

_TARGET: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "dualenc_compile_target", default=None
)
_MESH: contextvars.ContextVar = contextvars.ContextVar("dualenc_compile_mesh", default=None)

# JAX's names (`jax.default_matmul_precision`); 'default' leaves XLA's per-platform choice
PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


def mesh_platform(mesh) -> str:
    """'cpu' | 'tpu' | 'gpu' of a Mesh (or AbstractMesh-free device array)."""
    platform = mesh.devices.flat[0].platform
    return "gpu" if platform in ("cuda", "rocm") else platform


@contextlib.contextmanager
def compiling_for(mesh=None, *, platform: str = "", devices: int = 1) -> Iterator[None]:
    """Traces inside this block choose their paths for `mesh`'s devices (or for `platform` on
    `devices` devices: tests run the TPU paths' XLA on this CPU)."""
    where = (mesh_platform(mesh), int(mesh.devices.size)) if mesh is not None else None
    token = _TARGET.set(where or (platform, int(devices)))
    mesh_token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(mesh_token)
        _TARGET.reset(token)


def platform() -> str:
    """The platform being compiled for: the enclosing `compiling_for`, else JAX's default one."""
    target = _TARGET.get()
    if target is not None:
        return target[0]
    p = jax.devices()[0].platform
    return "gpu" if p in ("cuda", "rocm") else p


def device_count() -> int:
    """Devices of the mesh being compiled for, else all of JAX's devices."""
    target = _TARGET.get()
    return target[1] if target is not None else jax.device_count()


def keep_rows_split(x: jax.Array) -> jax.Array:
    """Pins activations (B, ...) to the batch split of the mesh being compiled for.

    Why: under FSDP the weights are split over 'fsdp' (input dim of the kernels, the hidden dim
    of the word embeddings) while the batch is split over ('data', 'fsdp'). Left to itself, XLA's
    sharding propagation carried the embedding table's hidden-dim split into the activations: on a
    v5e-16 with a (1, 16) mesh the MiniLM DPR step kept 8.2 GiB of temp per chip against 1.6 GiB
    data-parallel, and moved 4x the bytes. Pinning each layer's input and output to the batch
    split makes XLA all-gather the (small) weights instead, as FSDP means to. A no-op outside
    `compiling_for(mesh)`, on one device, and on a batch the split does not divide.
    """
    mesh = _MESH.get()
    if mesh is None or mesh.devices.size == 1 or not getattr(x, "ndim", 0):
        return x
    from jax.sharding import NamedSharding, PartitionSpec

    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names) or tuple(mesh.axis_names)
    ways = 1
    for a in axes:
        ways *= mesh.shape[a]
    if ways == 1 or x.shape[0] % ways:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(axes)))


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"matmul_precision={value!r}: one of {', '.join(PRECISIONS)}")
    return value


def set_precision(value: str) -> None:
    """JAX's default matmul precision for every later trace ('default': XLA's own)."""
    check_precision(value)
    jax.config.update("jax_default_matmul_precision", None if value == "default" else value)
