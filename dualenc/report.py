"""Reports: a comparison of several evaluation dirs, or the seed pipeline report (the command;
the library is `dualenc.retrieval.report` and `dualenc.retrieval.pipeline_report`).

    python -m dualenc.report --runs bm25=DIR1 --runs dense=DIR2 --output OUT

reads each DIR/metrics.json and DIR/curve.json (written by `dualenc.evaluate`) and writes
OUT/report.md (table: Top-k answer accuracy when every system has it, else R@k; nDCG@10, RR@10)
and OUT/recall.png (the curves against k).

    python -m dualenc.report --pipeline --data data/nq-toy --dense_model M --rerank_model CE \
        --output OUT [--split test --rerank_top 500 --keep 100]

runs the seed pipeline (BM25, dense, dense → cross-encoder, BM25 + dense → CE ensemble) and
writes OUT/report.md, OUT/pipeline.png and OUT/metrics.json; see
`dualenc.retrieval.pipeline_report`.
"""

from __future__ import annotations

import sys

from dualenc import multihost
from dualenc.io import InputError
from dualenc.retrieval.report import compare


def _parse_runs(items) -> dict[str, str]:
    runs = {}
    for item in items:
        name, sep, d = item.partition("=")
        if not sep or not name or not d:
            raise InputError(f"--runs wants name=DIR, got {item!r}", field="runs")
        runs[name] = d
    return runs


def _pipeline(f) -> str:
    from dualenc.retrieval import pipeline_report  # imported here: loads jax and the models

    for key in ("data", "dense_model", "rerank_model"):
        if not f[key].value:
            raise InputError(f"--pipeline needs --{key}", field=key)
    table, _ = pipeline_report.run_pipeline(
        f.data,
        f.dense_model,
        f.rerank_model,
        f.output,
        split=f.split,
        rerank_top=f.rerank_top,
        keep=f.keep,
        batch_size=f.batch_size,
        max_length=f.max_length,
        cache=f.cache,
        cache_dir=f.cache_dir,
    )
    return (multihost.epath(f.output) / "report.md").read_text() if multihost.is_main() else ""


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        if f.pipeline:
            multihost.initialize()
            print(_pipeline(f))
        else:
            print(compare(_parse_runs(f.runs), f.output))
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import flags

    from dualenc import cli

    flags.DEFINE_multi_string("runs", [], "name=DIR of a dualenc.evaluate output (repeatable).")
    flags.DEFINE_string("output", "report", "Output dir for report.md and recall.png.")
    flags.DEFINE_boolean("pipeline", False, "Run the seed pipeline report instead (below).")
    flags.DEFINE_string("data", "", "--pipeline: BEIR dir whose queries carry metadata.answers.")
    flags.DEFINE_string("dense_model", "", "--pipeline: bi-encoder dir / hub id (dense stage).")
    flags.DEFINE_string("rerank_model", "", "--pipeline: cross-encoder dir (reranks dense).")
    flags.DEFINE_string("split", "test", "--pipeline: qrels split whose queries are asked.")
    flags.DEFINE_integer("rerank_top", 500, "--pipeline: dense docs rescored per query.")
    flags.DEFINE_integer("keep", 100, "--pipeline: docs kept per query and system (the table).")
    flags.DEFINE_integer("batch_size", 64, "--pipeline: encode / rerank batch size.")
    flags.DEFINE_integer("max_length", 0, "--pipeline: dense max length (0: the model's).")
    flags.DEFINE_boolean("cache", True, "--pipeline: use the dualenc cache (--nocache: off).")
    flags.DEFINE_string("cache_dir", "", "--pipeline: cache dir ('': the default).")
    cli.run(main)
