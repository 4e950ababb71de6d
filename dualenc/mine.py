"""Mines hard negatives for (query, positive) training data.

Usage:
  python -m dualenc.mine --data train.json --method bm25 --output mined.jsonl
  python -m dualenc.mine --data BEIR_DIR --split train --method both --model MODEL_DIR
      --max_relative_score 0.95 --cross_encoder CE_DIR --output mined.json   (one line)

Candidates come from the pool of every passage in the data (the corpus for a BEIR dir): BM25,
exact dense search with `--model` (sharded over all devices), or `both` (the two windowed
rankings interleaved, dense first, repeats dropped; margins and scores then use the dense
model). A query's positives (all judged-relevant docs for BEIR) are never negatives; nor are
empty passages or, for QA data with `answers`, passages containing an answer (whole word, any case).
`--cross_encoder` re-scores the positives and candidates: its scores then drive the margin
filters and are the ones written. Output: DPR JSON (`.json`) or sentence-transformers JSONL
(`.jsonl`, one line per query: positives, negatives and "scores", positives first, the format the
training pipeline reads as teacher scores). Queries left without a negative are not written.
A summary of what each filter dropped is printed.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from dualenc import multihost
from dualenc.data import mining, negatives
from dualenc.io import InputError


def _define_flags() -> None:
    flags.DEFINE_string(
        "data", None, "Training data: DPR JSON/JSONL, ST JSONL/TSV or a BEIR dir.", required=True
    )
    flags.DEFINE_enum(
        "format", "auto", negatives.FORMATS, "Format of --data (auto: by name / content)."
    )
    flags.DEFINE_string("split", "train", "BEIR qrels split whose queries are mined.")
    flags.DEFINE_enum("method", "bm25", mining.METHODS, "Candidate retriever.")
    flags.DEFINE_string("model", None, "Dense model dir (needed by --method dense|both).")
    flags.DEFINE_enum("similarity", "cos", ["cos", "dot"], "Dense score: cosine or inner product.")
    flags.DEFINE_string("output", None, "Output file: .json (DPR) or .jsonl (ST).", required=True)
    flags.DEFINE_enum(
        "output_format", "auto", negatives.OUTPUT_FORMATS, "Output format (auto: by name)."
    )
    flags.DEFINE_integer("num_negatives", 5, "Negatives kept per query.")
    flags.DEFINE_integer("range_min", 0, "Skip the retriever's ranks below this (0-based).")
    flags.DEFINE_integer("range_max", 50, "Consider ranks below this only.")
    flags.DEFINE_float("absolute_margin", None, "Drop a candidate scoring > positive − margin.")
    flags.DEFINE_float(
        "max_relative_score",
        None,
        "Drop a candidate scoring ≥ this × the positive's score (0.95: the NV-Retriever rule; "
        "a relative margin r is 1 − r).",
    )
    flags.DEFINE_float("max_score", None, "Drop a candidate scoring above this.")
    flags.DEFINE_enum("sampling", "top", mining.SAMPLING, "Keep the best or a random subset.")
    flags.DEFINE_integer("seed", 0, "Seed of --sampling random.")
    flags.DEFINE_bool("answer_filter", True, "Drop candidates containing a DPR answer string.")
    flags.DEFINE_string("cross_encoder", None, "Cross-encoder dir re-scoring the candidates.")
    flags.DEFINE_integer("batch_size", 64, "Encoding batch size.", lower_bound=1)
    flags.DEFINE_integer("max_length", None, "Truncate passages to this many tokens.")
    flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv) -> None:
    del argv
    fv = flags.FLAGS
    multihost.initialize()
    cfg = mining.MineConfig(
        method=fv.method,
        num_negatives=fv.num_negatives,
        range_min=fv.range_min,
        range_max=fv.range_max,
        absolute_margin=fv.absolute_margin,
        max_relative_score=fv.max_relative_score,
        max_score=fv.max_score,
        sampling=fv.sampling,
        seed=fv.seed,
        answer_filter=fv.answer_filter,
    )
    try:
        out_fmt, summary = negatives.mine_to_file(
            fv.data,
            fv.output,
            cfg,
            format=fv.format,
            split=fv.split,
            output_format=fv.output_format,
            model=fv.model,
            cross_encoder=fv.cross_encoder,
            similarity=fv.similarity,
            batch_size=fv.batch_size,
            max_length=fv.max_length,
            progress=fv.progress,
        )
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if multihost.is_main():
        print(f"mined {fv.output} ({out_fmt}):\n{negatives.format_summary(summary)}")
    logging.info("wrote %s", fv.output)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
