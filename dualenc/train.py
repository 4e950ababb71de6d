"""Train a dual encoder (or, by `config.task`, a cross-encoder or a TSDAE adaptation):
python -m dualenc.train --config configs/nq_toy.py --workdir DIR.

Override any config key with --config.a.b=value (e.g. --config.train.num_steps=10); an unknown
key or a value of the wrong type fails before anything is loaded. Rerunning with the same
--workdir resumes from its newest checkpoint. On SIGTERM the run saves a checkpoint at the next
step boundary and exits 0 (rerun to resume). A non-finite loss exits 1 naming the step; a config
that cannot work (e.g. a batch not divisible by the accumulation steps) or bad training data exits
2 with one line naming the key or file:line.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from dualenc import cli, multihost
from dualenc.io import InputError
from dualenc.training import loop
from dualenc.training.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/*.py), overridable by --config.a.b=v.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, export/ go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    multihost.initialize()
    try:
        metrics = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, InputError) as e:  # bad config or data: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if metrics.get("preempted"):
        print(f"stopped by signal at step {metrics['step']}; checkpoint saved", flush=True)


if __name__ == "__main__":
    cli.run(main)
