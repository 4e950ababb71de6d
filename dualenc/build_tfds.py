"""Builds TFDS array_record datasets from corpora and training files (no TensorFlow needed).

Corpora (read back by `dualenc.data.tfds_corpus.TfdsCorpus`, or `tfds.data_source(NAME,
data_dir=OUT, split='corpus')`), streamed in constant memory:
  python -m dualenc.build_tfds --src=scifact/corpus.jsonl.gz --format=beir --out=/data/scifact_tfds
  python -m dualenc.build_tfds --src=collection.tsv --format=tsv --out=/data/msmarco --name=msmarco
Training data (train with --config.data.train.format=tfds --config.data.train.path=OUT):
  python -m dualenc.build_tfds --src=train.jsonl --format=st --out=/data/mystore
  python -m dualenc.build_tfds --src=nq-train.json --split=train --src=nq-dev.json --split=dev \
      --format=dpr --out=/data/nq_store --tokenizer=MODEL_DIR

Formats: corpora beir (corpus.jsonl(.gz) or its BEIR dir), jsonl ({_id|id, title?,
text|contents}), tsv (id, text[, title]); training dpr, st, st_jsonl, st_tsv, beir_train (a BEIR
dir's queries + qrels/<split>.tsv). Bad input is one line naming file:line, exit code 2, and no
output dir is left behind (the dataset is built in a temp dir, then renamed).
"""

from __future__ import annotations

import json

from absl import flags

from dualenc import cli
from dualenc.data import records, tfds_corpus
from dualenc.io import InputError

FLAGS = flags.FLAGS

TRAIN_FORMATS = {"dpr": "dpr", "st": "st", "st_jsonl": "st_jsonl", "st_tsv": "st_tsv"}
TRAIN_FORMATS["beir_train"] = "beir"
FORMATS = (*tfds_corpus.CORPUS_FORMATS, *TRAIN_FORMATS)


def _define_flags() -> None:
    flags.DEFINE_multi_string("src", None, "input file or dir (training data: one per --split)")
    flags.DEFINE_enum("format", None, FORMATS, "input format (corpora: beir, jsonl, tsv)")
    flags.DEFINE_string("out", None, "TFDS data dir to write (the dataset is OUT/NAME/...)")
    flags.DEFINE_string("name", None, "dataset name, snake_case (default: corpus / dualenc_train)")
    flags.DEFINE_multi_string("split", ["train"], "training data: split name of each --src")
    flags.DEFINE_bool("overwrite", False, "replace an existing OUT")
    flags.DEFINE_bool("progress", True, "corpora: show a progress bar (documents, rate)")
    flags.DEFINE_integer("shard_mb", 64, "corpora: serialized MB per array_record shard", 1)
    flags.DEFINE_string("tokenizer", None, "training data: model dir, precompute token lengths")
    flags.DEFINE_integer("q_max_length", 32, "with --tokenizer: data.q_max_length of the run")
    flags.DEFINE_integer("p_max_length", 128, "with --tokenizer: data.p_max_length of the run")
    flags.mark_flags_as_required(["src", "format", "out"])


def build(fv) -> dict:
    """Builds what the flags ask for; returns a summary (what `main` prints as JSON)."""
    if fv.format in tfds_corpus.CORPUS_FORMATS:
        if len(fv.src) != 1:
            raise InputError(f"a corpus is one --src, got {len(fv.src)}", field="src")
        out = tfds_corpus.build_corpus(
            fv.src[0], fv.out, format=fv.format, name=fv.name or "corpus",
            overwrite=fv.overwrite, shard_bytes=fv.shard_mb << 20, progress=fv.progress,
        )  # fmt: skip
        corpus = tfds_corpus.TfdsCorpus(out)
        return {"out": str(out), "dataset": str(corpus.path), "docs": len(corpus),
                "fingerprint": corpus.fingerprint()}  # fmt: skip
    if len(fv.split) != len(fv.src):
        raise InputError("give one --split per --src", field="split")
    out, counts = records.build_from_files(
        dict(zip(fv.split, fv.src, strict=True)),
        TRAIN_FORMATS[fv.format],
        fv.out,
        overwrite=fv.overwrite,
        name=fv.name or records.STORE_NAME,
        tokenizer=fv.tokenizer,
        q_max_length=fv.q_max_length,
        p_max_length=fv.p_max_length,
    )
    return {"out": str(out), "examples": counts}


def main(argv) -> None:
    del argv
    try:
        summary = build(FLAGS)
    except (InputError, FileExistsError) as e:  # bad user input: one line, exit code 2
        cli.fail(f"error: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
