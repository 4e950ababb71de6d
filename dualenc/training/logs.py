"""What a training run tells the world: log lines, TensorBoard scalars and JSON results files.

One owner for the run's outputs so that every task logs the same way: lines go to absl logging
and, on process 0 only, to stdout; TensorBoard is opened on process 0 only (others get None and
every writer call is a no-op); JSON files are written atomically (local) or in one write (gs://).
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import logging
from etils import epath

from dualenc import io, multihost


def log(msg: str) -> None:
    """One line to absl logging and, on process 0, to stdout."""
    logging.info(msg)
    if multihost.is_main():
        print(msg, flush=True)


def open_writer(workdir: epath.Path):
    """A TensorBoard SummaryWriter at workdir/tensorboard on process 0; None elsewhere."""
    if not multihost.is_main():
        return None
    from tensorboardX import SummaryWriter  # noqa: PLC0415 - process 0 only

    return SummaryWriter(str(workdir / "tensorboard"))


def write_scalars(writer, prefix: str, scalars: dict, step: int) -> None:
    """`prefix/name` scalars at `step` (numbers only; nested values are skipped)."""
    if writer is None:
        return
    for k, v in scalars.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            writer.add_scalar(f"{prefix}/{k}", float(v), step)
    writer.flush()


def write_json(path: epath.Path, obj) -> None:
    """`obj` as indented JSON at `path`: temp file + rename when local, one write on gs://."""
    if multihost.is_local(path):
        io.write_json(Path(path), obj)
    else:
        path.write_text(json.dumps(obj, indent=2) + "\n")
