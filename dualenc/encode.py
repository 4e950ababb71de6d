"""Encodes texts into embeddings (the command; the library is `dualenc.inference.encode`).

Usage:
  python -m dualenc.encode --model DIR_OR_HUB_ID --input FILE.jsonl[.gz] --output OUT.npy
  python -m dualenc.encode --model M --input corpus.jsonl --output_dir DIR [--shard_size 32768]

Each input line is a JSON object with a `text` field (and an optional `title`, prepended as in
BEIR; `_id` optional; a .tsv of id, text works too). The corpus is streamed: read, tokenised and
encoded a shard (--shard_size rows) at a time; with several processes (`multihost.initialize`)
each host encodes its own contiguous share over its own devices (no embeddings cross hosts), and
a killed run resumes at its first missing shard (`inference.shards`). --output_dir keeps the
shards + manifest.json + ids.jsonl; --output also (or only) writes one float32 (N, D) .npy in
input order, assembled shard by shard by process 0 (the shards then live in the corpus cache,
or a throwaway dir with --nocache). Empty texts are kept (one warning counts them) and embed as
`[CLS] [SEP]`, as in sentence-transformers.
"""

from __future__ import annotations

import sys

from absl import logging

from dualenc import multihost
from dualenc.inference import corpus_cache
from dualenc.inference.corpus_encode import encode_file
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
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Shard directory (any epath, gs:// too): one .npy per shard of --shard_size rows, each "
        "host writing its own, + manifest.json and ids.jsonl; a killed run resumes there.",
    )
    flags.DEFINE_integer(
        "shard_size", 32768, "Rows per shard (tokenised and encoded at a time).", lower_bound=1
    )
    flags.DEFINE_string(
        "cache_dir", "", "Shard cache for --output alone (default: the corpus cache dir)."
    )
    flags.DEFINE_bool("cache", True, "Keep --output's shards in the cache (resume, reuse).")
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
        if not (fv.output or fv.output_dir):
            raise InputError("give --output FILE.npy and/or --output_dir DIR", field="output")
        emb = encode_file(
            fv.model,
            fv.input,
            fv.output,
            output_dir=fv.output_dir,
            shard_rows=fv.shard_size,
            cache_dir=corpus_cache.resolve_cache_dir(fv.cache, fv.cache_dir),
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
    shape = emb.shape if hasattr(emb, "shape") else (emb.count, emb.dim)
    logging.info("wrote %s: %s float32", fv.output or fv.output_dir, shape)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
