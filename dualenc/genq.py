"""GenQ: synthetic queries for a corpus from a T5 query generator, as training data.

python -m dualenc.genq --model BeIR/query-gen-msmarco-t5-base-v1 --data DIR/scifact \
    --output DIR/scifact-genq [--queries_per_doc 3 --top_p 0.95 --top_k 25 --max_query_length 64]

Each document (title + " " + text, as BEIR's generator reads it) gets `queries_per_doc` sampled
queries (nucleus + top-k sampling, as BEIR's `QueryGenerator`; `--greedy` for one deterministic
query). The output is a BEIR dir: corpus.jsonl (the documents used), queries.jsonl (ids
`genQ1`, ...), qrels/train.tsv (each query → its document): train a bi-encoder on it with
`--config.data.train.format=beir --config.data.train.path=OUT` (with `data.mine_negatives` for
hard negatives: GenQ + MNRL is BEIR's and GPL's recipe). Exact duplicates of a document's query and
empty ones are dropped, and so are empty documents; the counts are printed. Files are written to
temporaries and renamed; on a pod only process 0 writes. The library is `dualenc.data.genq`.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from dualenc import cli
from dualenc.data import genq
from dualenc.io import InputError


def _define_flags() -> None:
    flags.DEFINE_string(
        "model", None, "T5 query generator: a local dir or a hub id.", required=True
    )
    flags.DEFINE_string(
        "data", None, "BEIR dir (its corpus.jsonl[.gz]) or a corpus .jsonl[.gz].", required=True
    )
    flags.DEFINE_string(
        "output", None, "Output BEIR dir: corpus.jsonl, queries.jsonl, qrels/.", required=True
    )
    flags.DEFINE_integer("queries_per_doc", 3, "Sampled queries per document (BEIR: 3).")
    flags.DEFINE_integer("max_doc_length", 384, "Document tokens the generator reads.")
    flags.DEFINE_integer("max_query_length", 64, "Most tokens per generated query.")
    flags.DEFINE_integer("batch_size", 32, "Documents per generation batch.")
    flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass.")
    flags.DEFINE_integer("top_k", 25, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_bool("greedy", False, "One greedy (deterministic) query per document.")
    flags.DEFINE_integer("limit", 0, "Only the first N documents (0: all).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("prefix", "genQ", "Query id prefix.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    for name in ("queries_per_doc", "max_doc_length", "max_query_length", "batch_size"):
        if getattr(FLAGS, name) <= 0:
            cli.fail(f"error: --{name} must be > 0, got {getattr(FLAGS, name)}")
    if not 0.0 < FLAGS.top_p <= 1.0 or FLAGS.top_k < 0:
        cli.fail(
            f"error: --top_p must be in (0, 1] and --top_k >= 0 (got {FLAGS.top_p}, {FLAGS.top_k})"
        )
    try:
        counts = genq.generate_dataset(
            FLAGS.model,
            FLAGS.data,
            FLAGS.output,
            queries_per_doc=FLAGS.queries_per_doc,
            max_doc_length=FLAGS.max_doc_length,
            max_query_length=FLAGS.max_query_length,
            batch_size=FLAGS.batch_size,
            top_p=FLAGS.top_p,
            top_k=FLAGS.top_k,
            greedy=FLAGS.greedy,
            limit=FLAGS.limit,
            seed=FLAGS.seed,
            prefix=FLAGS.prefix,
        )
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        cli.fail(f"error: {e}")
    if counts is not None:
        print(json.dumps(counts), flush=True)
        print(f"wrote {FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
