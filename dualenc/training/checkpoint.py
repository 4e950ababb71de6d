"""Orbax checkpoints of the train state + data-iterator state, and SIGTERM preemption handling.

A checkpoint step holds two items: `state` ({params, opt_state, step}, StandardSave) and `data`
(the pipeline's JSON iterator state). Orbax writes each step into a temporary directory and renames
it when complete, so a process killed mid-save leaves only a `*.orbax-checkpoint-tmp-*` directory
that restore never looks at. Restores use an abstract target (ShapeDtypeStructs carrying the
current shardings) so arrays land on the current mesh and optax NamedTuples keep their types.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from dualenc import multihost


def abstract_like(tree):
    """ShapeDtypeStructs (with each array's sharding) for a pytree of jax arrays."""

    def one(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, tree)


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` at `workdir/checkpoints` (local or `gs://`)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        keep: int = 2,
        every_steps: int = 0,
        async_save: bool = True,
    ):
        workdir = multihost.epath(workdir)
        if multihost.is_local(workdir):
            workdir = workdir.absolute()
        self.directory = workdir / "checkpoints"
        self.every_steps = int(every_steps)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(1, int(keep)),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Finalised checkpoint steps, oldest first (temporary / unfinalised dirs excluded)."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, data_state: dict | None) -> None:
        """Starts an (async) save of step `step`; returns once the arrays are copied off device."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """(state, data_state, step) from `step`, or from the newest readable checkpoint.

        Walking back past an unreadable newest step keeps a corrupted disk from blocking resume.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors = []
        for s in steps:
            try:
                args = ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                )
                out = self.manager.restore(s, args=args)
                return out["state"], dict(out["data"] or {}), s
            except Exception as e:  # noqa: BLE001 - try the next older step, report all at the end
                logging.warning("checkpoint step %d in %s is unreadable: %s", s, self.directory, e)
                errors.append(f"step {s}: {e}")
        raise RuntimeError(f"no readable checkpoint in {self.directory}: {'; '.join(errors)}")

    def wait(self) -> None:
        """Blocks until pending async saves are finalised (renamed into place)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionGuard:
    """Turns SIGTERM into a flag the train loop checks at each step boundary.

    The loop then saves a checkpoint, waits for it and returns normally, so the process exits 0
    and a rerun with the same workdir resumes from that step. Restores the old handler on exit.
    With several processes, `should_stop()` agrees across hosts, so all save the same step.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = signals
        self._event = threading.Event()
        self._old = {}

    @property
    def requested(self) -> bool:
        """This process got the signal (local view; use `should_stop` in the loop)."""
        return self._event.is_set()

    def should_stop(self) -> bool:
        """True on every process, at the same step, once any process got the signal.

        With several processes it is one round trip through the coordination service (no device
        sync): call it on every process at every step.
        """
        return multihost.any_host(self._event.is_set())

    def _handler(self, signum, frame):
        del frame
        logging.warning("received signal %d: will checkpoint and stop at the next step", signum)
        self._event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        return False
