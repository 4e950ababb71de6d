"""Training throughput: dualenc train step vs sentence-transformers MNRL on the same pairs.

all-MiniLM-L6-v2, batch 32, in-batch negatives only (no hard negatives), AdamW, dropout on (train
mode) on both sides. Compile / warm-up steps are excluded from the timing. Pairs (--pairs):
`nq`: NQ-Open questions with their gold passages, in file order (passages mostly fill
max_length 128); `msmarco`: the mixed-length workload of benchmarks/encode.py as training pairs,
TREC-DL queries with their judged MS MARCO passages (4,102 qrels), shuffled with seed 0 (random
batches, not length-sorted), max_length 256: the passage lengths vary, so padding each batch to
its longest text, as sentence-transformers does, wastes more. Prints one JSON object (pairs/s
for each and their ratio).

python benchmarks/train_step.py [--pairs nq|msmarco] [--steps 6] [--warmup 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_pairs(n: int, source: str = "nq") -> list[tuple[str, str]]:
    """(question, gold passage) pairs from the shared nq-open-oracle BEIR view, or (query,
    judged passage) pairs of the MS MARCO subset, shuffled (seed 0)."""
    from dualenc.io import data_dir, read_jsonl

    if source == "msmarco":
        import random

        from dualenc.data.beir import load_corpus, load_qrels, load_queries
        from dualenc.inference.encode import beir_doc_text

        root = data_dir() / "agentset-msmarco-subset"
        corpus = {k: beir_doc_text(d) for k, d in load_corpus(root / "corpus.jsonl.gz").items()}
        queries = load_queries(root / "queries.jsonl")
        qrels = load_qrels(root / "qrels" / "test.tsv")  # no header line: every row is a qrel
        pairs = [(queries[q], corpus[d]) for q, docs in qrels.items() for d in docs]
        random.Random(0).shuffle(pairs)
        return pairs[:n]

    root = data_dir() / "nq-open-oracle" / "beir"
    corpus = {
        d["_id"]: (d.get("title", "") + " " + d["text"]).strip()
        for _, d in read_jsonl(root / "corpus.jsonl")
    }
    queries = {q["_id"]: q["text"] for _, q in read_jsonl(root / "queries.jsonl")}
    pairs = []
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        pairs.append((queries[qid], corpus[did]))
        if len(pairs) == n:
            break
    return pairs


def dualenc_config(model_dir: str, batch: int, max_length: int, **train):
    import configs

    c = configs.base_config()
    c.model.name_or_path = model_dir
    c.model.pooling = "mean"
    c.data.num_negatives = 0
    c.data.q_max_length = c.data.p_max_length = max_length
    c.train.batch_size = batch
    c.train.learning_rate = 2e-5
    c.train.warmup_steps = 0
    c.train.schedule = "constant"
    c.train.grad_clip_norm = 0.0  # the torch loop does not clip either
    c.train.weight_decay = 0.01
    c.train.dropout = True
    c.train.update(train)
    return configs.finalize(c)


def _batches(tok, pairs, batch: int, max_length: int):
    """Numpy batches padded to the batch's bucket length (a few shapes, like the pipeline)."""
    from dualenc.tokenization import TRAIN_BUCKETS, bucket_length, pad_batch, tokenize

    out = []
    for s in range(0, len(pairs) - batch + 1, batch):
        qs, ps = zip(*pairs[s : s + batch], strict=True)
        q_ids, p_ids = tokenize(tok, qs, max_length), tokenize(tok, ps, max_length)
        lq = bucket_length(max(map(len, q_ids)), TRAIN_BUCKETS, max_length)
        lp = bucket_length(max(map(len, p_ids)), TRAIN_BUCKETS, max_length)
        qi, qm = pad_batch(q_ids, lq)
        pi, pm = pad_batch(p_ids, lp)
        out.append(
            {
                "q_input_ids": qi,
                "q_attention_mask": qm,
                "p_input_ids": pi[:, None],
                "p_attention_mask": pm[:, None],
                "p_ids": np.arange(s, s + batch, dtype=np.int32)[:, None],
                "q_pos_ids": np.arange(s, s + batch, dtype=np.int32)[:, None],
            }
        )
    return out


def prepare_dualenc(
    model_dir, pairs, batch, max_length, packing=False, dtype="float32", **train
) -> dict:
    """dualenc's jitted MNRL train step built through the library (config, encoder, optimizer,
    state, shardings), its initial state and the numpy batches of `pairs` (padded or packed),
    with the token counts the padding fractions come from. `dtype`: model.dtype (compute)."""
    import jax

    from dualenc.biencoder import model as bi_model
    from dualenc.biencoder import step as bi_step
    from dualenc.inference.packing import pack_batch
    from dualenc.training import optim
    from dualenc.training import state as state_lib

    c = dualenc_config(model_dir, batch, max_length, **train)
    c.data.packing = packing
    c.model.dtype = dtype
    base = bi_model.load_base_encoder(c.model)
    batches = _batches(base.tokenizer, pairs, batch, max_length)
    real = sum(int(b["q_attention_mask"].sum() + b["p_attention_mask"].sum()) for b in batches)
    padded = sum(b["q_input_ids"].size + b["p_input_ids"].size for b in batches)
    st_padded = sum(  # sentence-transformers pads each side to its longest text in the batch
        int(m.sum(-1).max()) * len(m)
        for b in batches
        for m in (b["q_attention_mask"], b["p_attention_mask"])
    )
    if packing:  # rows rounded up to a multiple of 4: few shapes to compile
        segs = int(c.data.pack_max_segments)
        batches = [pack_batch(b, max_segments=segs, rows_multiple=4) for b in batches]
        padded = sum(b["q_input_ids"].size + b["p_input_ids"].size for b in batches)
    tx, schedule = optim.make_optimizer(c.train, 1000)
    mesh = state_lib.build_mesh(c)
    state, sh = state_lib.create_state(
        bi_model.initial_dual_params(base, True), tx, mesh, state_lib.mesh_rules(c)
    )
    step = state_lib.jit_train_step(bi_step.make_train_step(c, base.spec, tx, schedule), sh, mesh)
    return {
        "config": c,
        "step": step,
        "state": state,
        "mesh": mesh,
        "rng": jax.random.key(0, impl=c.train.rng_impl),
        "batches": batches,
        "real_tokens": real,
        "padded_tokens": padded,
        "st_padded_tokens": st_padded,
    }


def time_dualenc(prep: dict, steps: int, warmup: int) -> dict:
    """Compiles every shape of the first warmup + steps batches, then times the last `steps`
    (dispatched back to back, one block at the end). Updates prep["state"]."""
    import jax

    from dualenc import sharding

    step, mesh, rng, batches = prep["step"], prep["mesh"], prep["rng"], prep["batches"]
    state, shapes = prep["state"], set()
    for b in batches[: warmup + steps]:  # compile every shape the timed steps use
        key = (b["q_input_ids"].shape, b["p_input_ids"].shape)
        if key not in shapes:
            shapes.add(key)
            state, m = step(state, sharding.shard_batch(b, mesh), rng)
            jax.block_until_ready(m)
    timed = batches[warmup : warmup + steps]
    t0 = time.perf_counter()
    for b in timed:
        state, m = step(state, sharding.shard_batch(b, mesh), rng)
    jax.block_until_ready((state, m))
    dt = time.perf_counter() - t0
    prep["state"] = state
    return {
        "seconds": dt,
        "steps": len(timed),
        "compiled_shapes": sorted(str(s) for s in shapes),
        "loss": float(m["loss"]),
    }


def bench_dualenc(
    model_dir, pairs, batch, max_length, steps, warmup, packing=False, **train
) -> dict:
    prep = prepare_dualenc(model_dir, pairs, batch, max_length, packing=packing, **train)
    t = time_dualenc(prep, steps, warmup)
    real, n_batches = prep["real_tokens"], len(prep["batches"])
    return {
        "pairs_per_sec": t["steps"] * batch / t["seconds"],
        "seconds": t["seconds"],
        "steps": t["steps"],
        "compiled_shapes": t["compiled_shapes"],
        "packing": packing,
        "padded_token_fraction": round(1 - real / prep["padded_tokens"], 4),
        "st_padded_token_fraction": round(1 - real / prep["st_padded_tokens"], 4),
        "real_tokens_per_pair": round(real / (n_batches * batch), 1),
        "loss": t["loss"],
    }


def bench_st(
    model_dir,
    pairs,
    batch,
    max_length,
    steps,
    warmup,
    dropout=True,
    device="cpu",
    amp=None,
    pretokenize=False,
) -> dict:
    """sentence-transformers' MNRL step (AdamW) on `device`; `amp`: a torch dtype to autocast
    the forward to (f32 master weights, as dualenc's model.dtype does). `pretokenize`: batches
    tokenised and on the device before timing, as dualenc's are (default: tokenised per step)."""
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer, losses

    model = SentenceTransformer(str(model_dir), device=device)
    model.max_seq_length = max_length
    model.train(dropout)  # eval mode = no dropout (gradients still flow)
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def features(s):
        qs, ps = zip(*pairs[s : s + batch], strict=True)
        feats = [model.tokenize(list(qs)), model.tokenize(list(ps))]
        return [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in f.items()} for f in feats]

    ready = {i * batch: features(i * batch) for i in range(warmup + steps)} if pretokenize else {}

    def one(s):
        feats = ready[s] if s in ready else features(s)
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(feats, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    for i in range(warmup):
        one(i * batch)
    sync()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loss = one(i * batch)
    sync()
    dt = time.perf_counter() - t0
    return {
        "pairs_per_sec": steps * batch / dt,
        "seconds": dt,
        "steps": steps,
        "loss": float(loss),
        "torch_threads": torch.get_num_threads(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pairs", choices=("nq", "msmarco"), default="nq")
    ap.add_argument("--out", default="")
    ap.add_argument("--no-dropout", action="store_true", help="both sides without dropout")
    ap.add_argument("--packing", action="store_true", help="dualenc packs q/p rows (data.packing)")
    args = ap.parse_args()
    import configs

    model_dir = configs.minilm_path()
    pairs = load_pairs(args.batch * (args.steps + args.warmup), args.pairs)
    load = os.getloadavg()
    common = (model_dir, pairs, args.batch, args.max_length, args.steps, args.warmup)
    drop = not args.no_dropout
    ours = bench_dualenc(*common, packing=args.packing, dropout=drop)
    st = bench_st(*common, dropout=drop)
    res = {
        "model": model_dir,
        "dropout": drop,
        "pairs": args.pairs,
        "batch": args.batch,
        "max_length": args.max_length,
        "dualenc": ours,
        "sentence_transformers_mnrl": st,
        "ratio": ours["pairs_per_sec"] / st["pairs_per_sec"],
        "loadavg_before": load,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
