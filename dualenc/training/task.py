"""The contract between the one training loop and a task, and the task registry.

A task (bi-encoder, cross-encoder, TSDAE, the ones to come) supplies only what differs between
tasks: its initial params, its batches, its pure step, its evaluation and its export. Everything
else — mesh, sharded state, jit, checkpoints, preemption, logging, periodic dev evaluation with
early stopping, the before/after table, metrics.json — belongs to `dualenc.training.loop`.

Tasks are found by name through `TASKS` (module paths, imported on demand), so the engine never
imports a task module and task modules may import the engine freely.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

# config.task -> the module whose `build(config, resumed) -> Task` sets the task up.
TASKS = {
    "biencoder": "dualenc.biencoder.task",
    "cross": "dualenc.cross.task",
    "tsdae": "dualenc.tsdae.task",
}


@dataclasses.dataclass
class Task:
    """What one task hands to the loop. Hooks get host (numpy) params, gathered once per use.

    `params` are the initial params: host arrays for a fresh run, or ShapeDtypeStructs when the
    run resumes (the checkpoint holds the real ones). `pipeline` yields host batches and has
    `get_state()` / `set_state()` (kept in checkpoints) and `steps_per_epoch`.
    """

    name: str
    describe: str  # the first log line's subject, e.g. "model X from Y"
    params: Any
    pipeline: Any
    make_step: Callable  # (tx, schedule) -> pure step (state, batch, rng) -> (state, metrics)
    # Periodic + final dev evaluation (None: no dev set). `dev_value` picks the figure that
    # early stopping compares (higher is better); `dev_note` adds to the dev log line.
    evaluate: Callable[[Any], dict] | None = None
    eval_metric: str = ""
    dev_value: Callable[[dict], float] | None = None
    dev_note: Callable[[dict], str] = lambda dev: ""
    patience: int = 0  # evals without improvement before stopping; 0 = never stop early
    keep_best: bool = False  # evaluate on test and export the best dev step's params
    save_best: Callable[[Any, int, dict, Any], None] | None = None  # (params, step, dev, dir)
    load_best: Callable[[Any], Any] | None = None  # dir -> the saved best params (after a resume)
    # Retrieval metrics on a split (the before/after table on `eval.before_after_split`).
    split_eval: Callable[[Any, str], dict] | None = None
    finish: Callable[[Any, dict | None], dict] = lambda params, dev: {}  # e.g. test metrics
    export: Callable[[Any, Any, int], None] | None = None  # (params, out dir, step): process 0
    export_note: str = "exported the model"


def build_task(config, resumed: bool) -> Task:
    """The Task `config.task` names, set up from `config` (`resumed`: weights come from the
    checkpoint, so a task may skip reading pretrained ones)."""
    name = config.get("task", "biencoder")  # checked against TASKS by training.config.validate
    return importlib.import_module(TASKS[name]).build(config, resumed)
