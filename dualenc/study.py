"""A training-strategy study: several strategies × seeds at EQUAL steps, one table (the
command; the library is `dualenc.training.study`).

python -m dualenc.study --config configs/study/scifact.py --workdir W

For BEIR data without a dev split (SciFact) a dev split is carved from TRAIN (`carve.fraction` of
the train queries, permuted by `carve.seed`), written as a derived BEIR dir W/data (corpus and
queries symlinked; qrels/train_carved.tsv, dev_carved.tsv and the test split): strategies are
compared and chosen on dev, never on test. Each strategy names where its negatives come from
(`negatives`: '' = the training data's own, 'bm25' / 'dense' = mined once with dualenc.mine,
'teacher' = mined and scored by a teacher) and trainer overrides; 'zero_shot' trains nothing.
Every trained model encodes the corpus once for both dev and test queries; every run writes TREC
run files. Results: W/runs/<name>/s<seed>/result.json (a rerun skips runs that have one),
W/study.json, W/study.md and W/study.png (mean ± std over seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from dualenc.io import InputError
from dualenc.training.config import ConfigError
from dualenc.training.study import Study
from dualenc.training.study_report import format_table


def enable_compile_cache(path) -> None:
    """JAX's persistent compilation cache: every seed's train step (same shapes) compiles once."""
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Study config (configs/study/*.py), overridable by --config.a.b=v."
    )
    flags.DEFINE_string("workdir", None, "Where the carved data, runs and report go.")
    flags.DEFINE_bool("report_only", False, "Only tabulate the runs finished so far.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    enable_compile_cache(Path(workdir) / "jax_cache")
    try:
        st = Study(cfg, workdir)
        summary = st.report_finished() if flags.FLAGS.report_only else st.run_all()
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(summary, cfg), flush=True)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
