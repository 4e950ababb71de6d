"""Device mesh, partition rules as data, and placement of params and batches.

Mesh axes are ('data', 'fsdp'): the batch is split over both (every device holds a distinct slice
of examples), and the rules additionally split large parameter matrices over 'fsdp' (ZeRO-3 style:
XLA all-gathers a layer's weights just in time and reduce-scatters its gradients).

Axis types: **Auto**, deliberately. `jax.make_mesh` defaults to Explicit axes in JAX 0.10, where
sharding is part of the array type and `q @ cand.T` on batch-sharded arrays raises until the
candidates are resharded by hand. With Auto axes the losses stay plain global-batch numpy-like
code (big_vision style) and the compiler inserts the all-gather; `jax.jit` in/out shardings and
`jax.shard_map` pin layouts wherever it matters. Tests prove the sharded results equal
single-device references.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = AXES

# (regex over the '/'-joined param path, PartitionSpec entries). First match wins; entries are
# axis names, tuples of axis names, or None; () or None as a whole means replicated. Linen
# kernels are (in, out): 'fsdp' splits the input dim. Word embeddings (vocab, H) split H, since
# vocabularies like 30,522 rarely divide; anything that does not divide falls back to replication.
DEFAULT_RULES: list[tuple[str, Any]] = [
    (
        r".*/(query|key|value|dense|q_lin|k_lin|v_lin|out_lin|lin1|lin2|query_proj|key_proj"
        r"|value_proj|in_proj|pos_proj|pos_q_proj)/kernel",
        ("fsdp", None),
    ),
    (r".*embeddings/.*embedding", (None, "fsdp")),
    (r".*", None),
]


def _resolve_shape(shape: Sequence[int], n: int) -> tuple[int, ...]:
    """Replaces one -1 by whatever fills `n` devices; errors name the shape and device count."""
    shape = tuple(int(s) for s in shape)
    fills = [i for i, s in enumerate(shape) if s == -1]
    if len(fills) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {shape}: sizes must be positive with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if fills:
        if n % known:
            raise ValueError(f"mesh shape {shape}: {n} devices are not divisible by {known}")
        shape = tuple(n // known if s == -1 else s for s in shape)
    if math.prod(shape) != n:
        raise ValueError(
            f"mesh shape {shape} needs {math.prod(shape)} devices, but {n} are available; "
            "use -1 for one axis to take the rest"
        )
    return shape


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = AXES, devices=None) -> Mesh:
    """A mesh over all (or the given) devices with Auto axis types (see the module docstring).

    `shape` has one entry per axis name; one entry may be -1 ('fill'). prod(shape) must equal
    the number of devices: silently idling devices is a bug, not a default.
    """
    axis_names = tuple(axis_names)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {tuple(shape)} does not match axis names {axis_names}")
    devs = list(jax.devices() if devices is None else devices)
    shape = _resolve_shape(shape, len(devs))
    types = (AxisType.Auto,) * len(shape)
    if devices is None:
        # Topology-aware device order (ICI rings on TPU); same devices, better placement.
        return jax.make_mesh(shape, axis_names, axis_types=types)
    return Mesh(np.asarray(devs, dtype=object).reshape(shape), axis_names, axis_types=types)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, rngs, small params)."""
    return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dim is split over: ('data', 'fsdp') where present."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names) or tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh, ndim: int | None = None) -> NamedSharding:
    """Dim 0 over ('data', 'fsdp'), other dims replicated. Without `ndim` the spec names dim 0
    only, so one sharding serves a whole batch dict of mixed ranks (as a pytree prefix)."""
    spec = P(batch_axes(mesh)) if ndim is None else P(batch_axes(mesh), *([None] * (ndim - 1)))
    return NamedSharding(mesh, spec)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy batch -> global arrays split on dim 0. Each process passes its own slice
    (global batch / process_count rows), so this is multi-host ready."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
    return out


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _entry_size(mesh: Mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[a] for a in names)


def _match(path: str, rules):
    """(pattern, entries) of the first rule whose regex fully matches `path`, else (None, ())."""
    for pattern, entries in rules:
        if re.fullmatch(pattern, path):
            if isinstance(entries, str):  # a bare axis name shards dim 0
                entries = (entries,)
            return pattern, tuple(tuple(e) if isinstance(e, list) else e for e in entries or ())
    return None, ()


def spec_for(path: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
    """The PartitionSpec of one param: first matching rule, replicated on any dim that the rule's
    axes do not divide (logged), and axes missing from the mesh are an error."""
    pattern, entries = _match(path, rules)
    if len(entries) > len(shape):
        raise ValueError(f"rule {pattern!r} has {len(entries)} entries for {path} of shape {shape}")
    out = []
    for dim, entry in zip(shape, entries, strict=False):  # dims past the entries: replicated
        if entry is None:
            out.append(None)
            continue
        for a in entry if isinstance(entry, tuple) else (entry,):
            if a not in mesh.axis_names:
                raise ValueError(f"rule {pattern!r} names axis {a!r}, mesh has {mesh.axis_names}")
        size = _entry_size(mesh, entry)
        if dim % size:
            logging.warning(
                "sharding: %s dim of size %d is not divisible by %s (%d devices); replicated",
                path,
                dim,
                entry,
                size,
            )
            out.append(None)
        else:
            out.append(entry)
    return P(*out)


def param_shardings(params, rules, mesh: Mesh):
    """Pytree of NamedSharding matching `params` (arrays or ShapeDtypeStructs), from `rules`:
    a sequence of (regex fully matching the '/'-joined path, PartitionSpec entries)."""
    rules = list(rules)

    def one(path, x):
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        return NamedSharding(mesh, spec_for(_path_str(path), shape, rules, mesh))

    return jax.tree_util.tree_map_with_path(one, params)
