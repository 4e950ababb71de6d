"""Stores training files once as a TFDS dataset for training (the library: `dualenc.data.records`).

  python -m dualenc.data.store --input=train.jsonl --format=st --output=/data/mystore

then train with data.train.format='tfds', data.train.path=/data/mystore. `--tokenizer` also caches
the token lengths the pipeline pads by (keyed by tokenizer and max lengths). Kept for existing
scripts: `python -m dualenc.build_tfds` builds the same datasets, and corpora too.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from dualenc.data import records
from dualenc.io import InputError

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_multi_string("input", None, "training file (dpr/st) or BEIR dir; one per split")
    flags.DEFINE_multi_string("split", ["train"], "split name of each --input, in order")
    flags.DEFINE_string("format", "dpr", "dpr, st, st_jsonl, st_tsv or beir")
    flags.DEFINE_string("output", None, "store dir to write")
    flags.DEFINE_bool("overwrite", False, "replace an existing store dir")
    flags.DEFINE_string("tokenizer", None, "model dir: precompute token lengths for training")
    flags.DEFINE_integer("q_max_length", 32, "with --tokenizer: data.q_max_length of the run")
    flags.DEFINE_integer("p_max_length", 128, "with --tokenizer: data.p_max_length of the run")
    flags.mark_flags_as_required(["input", "output"])


def main(argv) -> None:
    del argv
    if len(FLAGS.split) != len(FLAGS.input):
        print("error: give one --split per --input", file=sys.stderr)
        sys.exit(2)
    try:
        out, counts = records.build_from_files(
            dict(zip(FLAGS.split, FLAGS.input, strict=True)),
            FLAGS.format,
            FLAGS.output,
            overwrite=FLAGS.overwrite,
            tokenizer=FLAGS.tokenizer,
            q_max_length=FLAGS.q_max_length,
            p_max_length=FLAGS.p_max_length,
        )
    except (InputError, FileExistsError) as e:  # bad user input: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for s, n in counts.items():
        logging.info("%s: %d examples", s, n)
    print(out)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
