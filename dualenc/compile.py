"""Compile a config's real step for a TPU slice or GPU node from this machine, no accelerator:
python -m dualenc.compile --config configs/dpr_nq_tpu.py --target tpu:v5e-16 [--step train]

Prints per-chip argument / temp / output memory against the chip's HBM, XLA's flops per chip next
to the analytic model flops, the roofline step time and the MFU a measured step time would mean
(like MaxText's train_compile.py, for every dualenc step). Needs shapes, not weights: a hub model
name resolves offline from dualenc's table of known configs. A step that does not fit exits 2 with
one line naming what to change; --json prints the figures as one JSON object instead.

Targets: tpu:v5e-8, tpu:v5e-16, tpu:v5e-256, tpu:v4-32, tpu:v5p-8 (libtpu, `make setup`),
gpu:h100x8, gpu:a100x8 (the CUDA plugin: `make compile-gpu`).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from dualenc import cli
from dualenc.aot import programs, report, targets
from dualenc.models import target as target_lib
from dualenc.training.config import ConfigError, validate

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/*.py), overridable by --config.a.b=v.",
    lock_config=True,
)
_TARGET = flags.DEFINE_enum("target", None, list(targets.TARGETS), "Slice or node to compile for.")
_STEP = flags.DEFINE_enum("step", "train", list(programs.STEPS), "Which step of the config.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
flags.mark_flags_as_required(["config", "target"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:
        mesh = report.make_mesh(_TARGET.value, config.mesh.shape)
        validate(config, int(mesh.devices.size))
        target_lib.set_precision(config.model.matmul_precision)
        program = programs.build(config, mesh, _STEP.value)
        rep, _ = report.compile_report(program, mesh, _TARGET.value)
    except targets.TargetUnavailable as e:
        cli.fail(f"error: {e}")
    except (ConfigError, ValueError) as e:
        cli.fail(f"error: {e}")
    if _JSON.value:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        print(report.table(rep))
    if not rep.fits:
        print(report.advice(rep, config), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli.run(main)
