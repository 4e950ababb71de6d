"""Encoding batches: tokenisation limits, device placement and the progress bar.

Its own module so that the padded path (`inference.encode`), the packed path
(`inference.packing`) and pair classification (`inference.classify`) share one placer without
importing each other: each batch sharded over the devices of all hosts, or on one device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dualenc import multihost
from dualenc.tokenization import tokenize


class Placer:
    """Places params once per layout, and each batch sharded over `mesh` or on one device.

    With several processes every batch is sharded over the global mesh (each host holds the
    whole padded batch and contributes its devices' rows); params must then be host values.
    """

    def __init__(self, params, mesh: Mesh | None):
        self.params, self.mesh = params, mesh
        self.ndev = mesh.size if mesh is not None else 1
        self.multi = jax.process_count() > 1
        self._cache = {}

    def rows(self, n: int, batch_size: int) -> int:
        """Padded row count: a full batch, else the next power of two (bounded shapes)."""
        r = n if n >= batch_size else min(batch_size, 1 << max(n - 1, 0).bit_length())
        if self.ndev > 1 and (r >= self.ndev or self.multi):
            r = math.ceil(r / self.ndev) * self.ndev
        return r

    def put(self, ids: np.ndarray, mask: np.ndarray):
        """(params, ids, mask) on the devices: rows sharded when they split evenly."""
        sharded = self.ndev > 1 and ids.shape[0] % self.ndev == 0
        if sharded:
            batch = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names))
            rep = NamedSharding(self.mesh, PartitionSpec())
        else:
            batch = rep = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        if sharded not in self._cache:
            self._cache[sharded] = put(self.params, rep)
        return self._cache[sharded], put(ids, batch), put(mask, batch)


def put(tree, sharding):
    """device_put that also works for a sharding spanning other hosts' devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
        multihost.to_host(tree),
    )


def default_mesh() -> Mesh | None:
    """A 1-D mesh over all devices of all processes (None for a single device)."""
    devs = jax.devices()
    return Mesh(np.array(devs), ("data",)) if len(devs) > 1 else None


def tokenize_for_encoding(
    encoder, texts: Sequence[str], batch_size: int, max_length: int | None
) -> tuple[list, int]:
    """(token ids per text, the length limit used): the checks and truncation shared by the
    padded and the packed encoding paths. The limit is the encoder's unless `max_length` is
    given, never past its position table."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    limit = int(getattr(encoder.config, "max_position_embeddings", 0) or 1 << 30)
    max_length = min(int(max_length or encoder.max_length), limit)
    texts = list(texts)
    return (tokenize(encoder.tokenizer, texts, max_length) if texts else []), max_length


def progress_bar(total: int, enabled: bool):
    """A tqdm bar counting texts, shown on process 0 only."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="text",
        desc="encode",
        disable=not enabled or not multihost.is_main(),
        dynamic_ncols=True,
    )
