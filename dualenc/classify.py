"""Sentence-pair classification with a cross-encoder (paraphrase, duplicate questions, NLI): the
command; the library is `dualenc.inference.classify`.

Usage:
  python -m dualenc.classify --model DIR --data test.tsv [--dev dev.tsv] --output OUT_DIR

MODEL is a transformers `*ForSequenceClassification` dir (BERT / DistilBERT / DeBERTa). For two
labels the score is logit[1] - logit[0] (one label: the logit) and a pair is positive when the
score reaches the threshold: 0 (the argmax) by default, or the one that maximises F1 on `--dev`,
applied unchanged to `--data`. With more labels the prediction is the argmax. OUT_DIR receives
metrics.json, report.md, confusion.png and predictions.jsonl, written atomically by process 0.
`--label_scale 5` reads graded labels (STS-B 0-5) and reports the Spearman and Pearson x 100 of a
1-logit model's sigmoid scores (the `cross.label_scale` training figure).
"""

from __future__ import annotations

import sys

from absl import logging

from dualenc import metrics, multihost
from dualenc.inference.classify import classify_files, graded_files
from dualenc.io import InputError
from dualenc.models import target


def _define_flags() -> None:
    from absl import flags

    from dualenc import cli

    flags.DEFINE_string(
        "model", None, "transformers *ForSequenceClassification dir (or hub id).", required=True
    )
    flags.DEFINE_string(
        "data",
        None,
        "Labelled pair file to evaluate (.tsv/.txt, .csv, .jsonl[.gz]).",
        required=True,
    )
    flags.DEFINE_string(
        "output", None, "Output directory (metrics.json, report.md, ...).", required=True
    )
    flags.DEFINE_string(
        "dev",
        None,
        "Labelled dev file: the binary threshold maximising its F1 "
        "is applied to --data (default threshold 0, the argmax).",
    )
    flags.DEFINE_string("text_a", None, "First-text column (default: a known layout's).")
    flags.DEFINE_string("text_b", None, "Second-text column (default: a known layout's).")
    flags.DEFINE_string("label", None, "Label column (default: a known layout's).")
    flags.DEFINE_list(
        "label_names",
        None,
        "Class names by id, e.g. entailment,neutral,contradiction (default: the model's id2label).",
    )
    flags.DEFINE_integer("batch_size", 64, "Pairs per jitted step.", lower_bound=1)
    flags.DEFINE_integer("max_length", None, "Pair length limit in tokens.", lower_bound=4)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
    cli.define_matmul_precision()
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_float(
        "label_scale",
        0.0,
        "> 0: graded labels in [0, label_scale] (STS-B: 5) scored by a 1-logit model; "
        "reports Spearman and Pearson instead of classification figures.",
        lower_bound=0.0,
    )
    flags.DEFINE_bool(
        "symmetric",
        False,
        "Score each pair as the mean of both orders' logits (a model trained with "
        "cross.symmetric on a paraphrase / duplicate task).",
    )


def main(argv) -> None:
    from absl import flags

    del argv
    fv = flags.FLAGS
    multihost.initialize()
    target.set_precision(fv.matmul_precision)
    common = dict(
        columns=(fv.text_a, fv.text_b, fv.label),
        batch_size=fv.batch_size,
        max_length=fv.max_length,
        dtype=fv.dtype,
        progress=fv.progress,
        symmetric=fv.symmetric,
    )
    try:
        if fv.label_scale > 0:
            res = graded_files(fv.model, fv.data, fv.output, label_scale=fv.label_scale, **common)
            m = res["test"]
            print(f"Spearman {m['spearman']:.2f} Pearson {m['pearson']:.2f} (n = {m['n']})")
            return
        res = classify_files(
            fv.model, fv.data, fv.output, dev=fv.dev, names=fv.label_names, **common
        )
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    m = res["test"]
    logging.info("accuracy %.4f, macro F1 %.4f", m["accuracy"], m["macro"]["f1"])
    print(metrics.confusion_text(m["confusion"], res["labels"]))


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
