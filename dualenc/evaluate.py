"""Evaluate a retriever on a BEIR-format dataset (the command; the library is
`dualenc.retrieval.evaluate`, whose docstring describes the outputs and options).

    python -m dualenc.evaluate --model M --data BEIR_DIR --split test --index exact --output DIR
    python -m dualenc.evaluate --config configs/eval/default.py --config.model=M ...

The flag form builds the same ConfigDict as configs/eval/default.py; flags given explicitly
override the --config file. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import json
import sys

import ml_collections

from dualenc import multihost
from dualenc.io import InputError
from dualenc.retrieval.evaluate import KINDS, default_config, run_evaluation

_FLAG_KEYS = (
    "shard_size",
    "model",
    "data",
    "split",
    "qrels_file",
    "corpus",
    "index",
    "output",
    "k",
    "fusion_depth",
    "batch_size",
    "dtype",
    "matmul_precision",
    "max_length",
    "chunk_size",
    "chunk_overlap",
    "cache",
    "cache_dir",
    "similarity",
    "quantize",
    "rescore_multiplier",
    "rescore_with",
    "truncate_dim",
    "calibration_size",
    "fusion",
    "hybrid_weight",
    "tune_split",
    "tune_metric",
    "rerank_model",
    "rerank_top",
    "rerank_fusion_weight",
    "final_top",
    "save_index",
    "tag",
    "progress",
)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Eval config file (configs/eval/*.py).")
    d = default_config()
    helps = {
        "index": f"one of {KINDS}",
        "data": "BEIR dir (corpus, queries, qrels/<split>.tsv)",
        "corpus": "corpus to search instead of --data's corpus.jsonl[.gz]: a TFDS dataset dir "
        "(python -m dualenc.build_tfds), a JSONL(.gz) or TSV(.gz) file",
        "tune_split": "split whose queries tune the hybrid weight (never the test split)",
        "cache": "reuse cached corpus embeddings / BM25 indexes (--nocache: never read or write)",
        "cache_dir": "cache dir ('': $DUALENC_CACHE_DIR or $XDG_CACHE_HOME/dualenc)",
        "shard_size": "corpus rows encoded and searched at a time (one memory-mapped .npy shard "
        "each, in the cache dir; several hosts each encode and search their own shards)",
        "save_index": "also write the searched index here (for dualenc.search)",
        "rerank_model": "cross-encoder dir (*ForSequenceClassification) that reranks the run",
        "rerank_top": "first-stage docs per query rescored by --rerank_model (e.g. 100 or 500)",
        "rerank_fusion_weight": "> 0: rank by first stage + w * CE (per-query --fusion "
        "normalisation; e.g. the weight `cross.fusion` chose on dev); 0: the CE alone",
        "final_top": "cut the final run and its metrics to the top N (0: keep --k docs)",
        "chunk_size": "> 0: index windows of this many text tokens (each with the title) and "
        "score a doc by its best window (MaxP); 0: one vector per doc, truncated at max_length",
        "chunk_overlap": "tokens shared by consecutive windows (with --chunk_size)",
        "quantize": "'' (float32) | int8 | binary: search compressed corpus vectors (int8 ranges "
        "calibrated on the corpus; binary = sign bits, Hamming) and rescore the top candidates",
        "rescore_multiplier": "with --quantize: rescore the top multiplier * k candidates with the "
        "float32 query (sentence-transformers' rescore); 0: first-stage scores only",
        "rescore_with": "with --quantize: what the candidates are rescored against: '' the index's "
        "own codes (int8 dequantised, binary +-1) | int8 | float (a copy kept beside the index)",
        "truncate_dim": "> 0: Matryoshka truncation, search the first d dims of every vector "
        "(renormalised when the model normalises); exact and quantised indexes",
        "calibration_size": "with --quantize int8 (or --rescore_with int8): corpus vectors "
        "sampled to calibrate the per-dimension ranges",
        "dtype": "compute dtype of encoders and reranker: float32 | bfloat16",
        "matmul_precision": "default | high | highest | bfloat16 | tensorfloat32 | float32: "
        "XLA's f32 matmul precision (TPU / NVIDIA default to faster reduced precision; float32 "
        "parity with PyTorch holds at highest)",
    }
    for key in _FLAG_KEYS:
        v, h = d[key], helps.get(key, f"config.{key}")
        if isinstance(v, bool):
            flags.DEFINE_boolean(key, v, h)
        elif isinstance(v, int):
            flags.DEFINE_integer(key, v, h)
        elif isinstance(v, float):
            flags.DEFINE_float(key, v, h)
        else:
            flags.DEFINE_string(key, v, h)


def config_from_flags(flag_values) -> ml_collections.ConfigDict:
    """--config file (or the default config) with explicitly given flags applied on top."""
    cfg = flag_values.config if flag_values.config is not None else default_config()
    with cfg.unlocked():
        for key in _FLAG_KEYS:
            if flag_values[key].present:
                cfg[key] = flag_values[key].value
    return cfg


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    multihost.initialize()
    try:
        metrics = run_evaluation(config_from_flags(flags.FLAGS))
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if multihost.is_main():
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
