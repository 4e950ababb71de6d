"""Batches that are a pure function of the global step: resuming is restoring one number.

The cross-encoder and TSDAE pipelines draw their global batch `step` from a seeded permutation
per epoch (`batch_at(step)`), so the iterator state kept in a checkpoint is the step alone, and
every host computes the same order without talking to the others.
"""

from __future__ import annotations

import numpy as np


class SteppedBatches:
    """An iterator over `batch_at(0), batch_at(1), ...` with a `{step}` checkpoint state.
    Subclasses define `batch_at(step)` and `steps_per_epoch`."""

    _step = 0

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def get_state(self) -> dict:
        return {"step": int(self._step)}

    def set_state(self, state: dict) -> None:
        self._step = int(state.get("step", 0))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self._step)
        self._step += 1
        return batch
