"""Portable export of bi-encoders and cross-encoders (the command; the library is
`dualenc.export.portable`, the runtimes `dualenc.export.runtime`).

Usage:
  python -m dualenc.export --model DIR --format onnx|jax --output OUT

`--model` is a sentence-transformers / Hugging Face encoder dir (bi-encoder: embeddings) or a
transformers `*ForSequenceClassification` dir (cross-encoder: logits). OUT holds model.onnx or
model.jax, tokenizer.json and manifest.json. Bad input prints one line and exits with code 2.
"""

from __future__ import annotations

import sys

from dualenc import multihost
from dualenc.export.portable import DEFAULT_PLATFORMS, FORMATS, export
from dualenc.io import InputError
from dualenc.models.convert import WeightsError


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "Encoder or *ForSequenceClassification dir (or hub id).")
    flags.DEFINE_string("format", None, f"Export format: one of {', '.join(FORMATS)}.")
    flags.DEFINE_string("output", None, "Output directory (replaced atomically).")
    flags.DEFINE_string(
        "kind", "auto", "bi (embeddings), cross (logits) or auto (cross for *ForSequence...)."
    )
    flags.DEFINE_integer(
        "max_length", None, "Token limit recorded for tokenisation.", lower_bound=2
    )
    flags.DEFINE_list(
        "platforms", list(DEFAULT_PLATFORMS), "jax.export target platforms (cpu, cuda, tpu)."
    )


def main(argv) -> None:
    from absl import flags, logging

    fv = flags.FLAGS
    try:
        if len(argv) > 1:
            raise InputError(f"unexpected arguments: {argv[1:]}")
        for name in ("model", "format", "output"):
            if not getattr(fv, name):
                raise InputError(f"--{name} is required", field=name)
        multihost.initialize()
        out = export(
            fv.model, fv.format, fv.output, kind=fv.kind, max_length=fv.max_length,
            platforms=fv.platforms,
        )  # fmt: skip
    except (InputError, WeightsError) as e:  # bad user input: one clear line, exit code 2
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    logging.info("wrote %s", out)
    print(out)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
