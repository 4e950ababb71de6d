"""Encodes texts into embeddings (the command; the library is `dualenc.inference.encode`).

Usage:
  python -m dualenc.encode --model DIR_OR_HUB_ID --input FILE.jsonl[.gz] --output OUT.npy

Each input line is a JSON object with a `text` field (and an optional `title`, prepended as in
BEIR). The output is a float32 (N, D) .npy array in input order, written atomically by process 0.
Empty texts are kept (one warning counts them) and embed as `[CLS] [SEP]`, as in
sentence-transformers. With several processes (`multihost.initialize`), every batch is sharded
over all devices of all hosts and the embeddings are gathered to every host.
"""

from __future__ import annotations

import sys

from absl import logging

from dualenc import multihost
from dualenc.inference.encode import encode_file
from dualenc.io import InputError
from dualenc.models import target


def _define_flags() -> None:
    from absl import flags

    from dualenc import cli

    flags.DEFINE_string(
        "model",
        None,
        "Model: a Hugging Face or sentence-transformers dir, or a hub id.",
        required=True,
    )
    flags.DEFINE_string(
        "input",
        None,
        "JSONL(.gz) file, one object per line with a `text` field and an optional `title`.",
        required=True,
    )
    flags.DEFINE_string(
        "output",
        None,
        "Output .npy path: float32 (N, D) embeddings in input order, written atomically.",
        required=True,
    )
    flags.DEFINE_integer(
        "batch_size", 64, "Texts per jitted step (padded to a bucket length).", lower_bound=1
    )
    flags.DEFINE_integer(
        "max_length",
        None,
        "Truncate to this many tokens (default: the model's max_seq_length).",
        lower_bound=2,
    )
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
    cli.define_matmul_precision()
    flags.DEFINE_enum(
        "tower",
        "passage",
        ["query", "passage"],
        "Which tower of a separate-tower export (MODEL/query + MODEL/passage) encodes the texts.",
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool(
        "packing",
        True,
        "Pack several texts per row (BERT / DistilBERT; batch_size then counts rows); "
        "--nopacking pads each batch to a length bucket.",
    )


def main(argv) -> None:
    from absl import flags

    del argv
    fv = flags.FLAGS
    multihost.initialize()
    target.set_precision(fv.matmul_precision)
    try:
        emb = encode_file(
            fv.model,
            fv.input,
            fv.output,
            batch_size=fv.batch_size,
            max_length=fv.max_length,
            dtype=fv.dtype,
            progress=fv.progress,
            tower=fv.tower,
            packing=None if fv.packing else False,
        )
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("wrote %s: %s float32", fv.output, emb.shape)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
