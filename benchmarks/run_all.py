"""`make bench`: every speed benchmark vs the PyTorch stack in one run, one JSON + one table.

Runs (each in its own process, dualenc and PyTorch timed in the same process):
encode SciFact (first --scifact_limit docs; --full: all 5,183) at max_length 256; the mixed-length
workload (MS MARCO subset passages + NQ questions) padded and packed; the MNRL train step (batch
32) padded and packed on NQ (question, gold passage) pairs at 128 tokens and on MS MARCO (query,
judged passage) pairs in random order at 256; rerank (benchmarks/rerank.py, when present); exact
search (dualenc jitted top-k vs sentence-transformers' semantic_search). The f32 GEMM peak is
measured first, in the same run (best of numpy and jitted JAX on a 2048^3 matmul).
Writes benchmarks/results/<hostname>.json and .md (the table for README.md).

    python benchmarks/run_all.py [--full] [--only encode_scifact,train_padded] [--out_dir ...]
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

flags.DEFINE_bool("full", False, "Encode all 5,183 SciFact docs (default: --scifact_limit).")
flags.DEFINE_integer("scifact_limit", 1000, "SciFact docs to encode without --full.")
flags.DEFINE_integer("mixed_limit", 2000, "Mixed-length texts to encode (0: all 7,655).")
flags.DEFINE_integer("train_steps", 6, "Timed train steps per side.")
flags.DEFINE_integer("rerank_pairs", 1000, "(query, doc) pairs for benchmarks/rerank.py.")
flags.DEFINE_list("only", [], "Run only these benchmarks (names as in the table).")
flags.DEFINE_string("out_dir", os.path.join(HERE, "results"), "Where <hostname>.json/.md go.")
flags.DEFINE_integer("timeout", 3600, "Seconds per benchmark process.")
FLAGS = flags.FLAGS

PY = sys.executable
ENC = [PY, os.path.join(HERE, "encode.py")]
TRAIN = [PY, os.path.join(HERE, "train_step.py")]
# Forward FLOPs per token of all-MiniLM-L6-v2 (2 x matmul params per layer, 6 layers, H 384,
# FFN 1536) plus attention at the mean length; a train step costs 3x the forward.
MATMUL_FLOP_PER_TOKEN = 6 * 2 * (4 * 384 * 384 + 2 * 384 * 1536)


def flop_per_token(mean_len: float) -> float:
    return MATMUL_FLOP_PER_TOKEN + 6 * 4 * mean_len * 384


def gemm_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Best f32 GFLOP/s of a big square matmul: numpy (BLAS) and jitted JAX, in this process."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    for name, fn, x in (
        ("numpy", np.matmul, a),
        ("jax", jax.jit(jnp.matmul), jnp.asarray(a)),
    ):
        jax.block_until_ready(fn(x, x))
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(x, x))
            best = min(best, time.perf_counter() - t)
        out[f"{name}_gflops"] = round(2 * n**3 / best / 1e9, 1)
    out["peak_gflops"] = max(out.values())
    return out


def run_json(cmd: list[str]) -> dict:
    """Runs one benchmark process; its stdout's first JSON object (stderr is passed through)."""
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=FLAGS.timeout, check=False)
    if p.returncode:
        return {"error": f"exit {p.returncode}", "cmd": " ".join(cmd)}
    start = p.stdout.find("{")
    res, _ = json.JSONDecoder().raw_decode(p.stdout[start:])
    res["cmd"] = " ".join(cmd[1:])
    res["wall_s"] = round(time.perf_counter() - t, 1)
    return res


def benchmarks() -> dict[str, list[str]]:
    limit = [] if FLAGS.full else [f"--limit={FLAGS.scifact_limit}"]
    mixed = ["--workload=mixed", f"--limit={FLAGS.mixed_limit}", "--batch_size=64"]
    train = [f"--steps={FLAGS.train_steps}", "--warmup=2"]
    msmarco = ["--pairs=msmarco", "--max-length=256"]
    out = {
        "encode_scifact": ENC + limit,
        "encode_mixed_padded": ENC + mixed,
        "encode_mixed_packed": ENC + mixed + ["--packing"],
        "train_padded": TRAIN + train,
        "train_packed": TRAIN + train + ["--packing"],
        "train_msmarco_padded": TRAIN + train + msmarco,
        "train_msmarco_packed": TRAIN + train + msmarco + ["--packing"],
        "search_exact": [PY, os.path.join(HERE, "search.py"), "--leaves_to_search=", "--n=100000"],
    }
    if os.path.exists(os.path.join(HERE, "rerank.py")):
        out["rerank"] = [PY, os.path.join(HERE, "rerank.py"), f"--pairs={FLAGS.rerank_pairs}"]
    return out


def _encode_row(r: dict, peak: float) -> dict:
    jx, st = r["dualenc"], r["sentence_transformers"]
    f = flop_per_token(r["mean_tokens_per_doc"])
    return {
        "unit": "tokens/s",
        "dualenc": jx["tokens_per_s"],
        "pytorch": st["tokens_per_s"],
        "ratio": r["speedup_dualenc_over_st"],
        "dualenc_peak_fraction": round(jx["tokens_per_s"] * f / 1e9 / peak, 3),
        "pytorch_peak_fraction": round(st["tokens_per_s"] * f / 1e9 / peak, 3),
        "dualenc_padding": jx["padded_token_fraction"],
        "pytorch_padding": st["padded_token_fraction"],
        "max_abs_diff": r.get("max_abs_diff_vs_st"),
    }


def _train_row(r: dict, peak: float) -> dict:
    jx, st = r["dualenc"], r["sentence_transformers_mnrl"]
    tok = jx.get("real_tokens_per_pair", 0.0)
    f = 3 * flop_per_token(tok / 2) * tok / 1e9 / peak  # per pair/s, as a peak fraction
    return {
        "unit": "pairs/s",
        "dualenc": round(jx["pairs_per_sec"], 2),
        "pytorch": round(st["pairs_per_sec"], 2),
        "ratio": round(r["ratio"], 3),
        "dualenc_peak_fraction": round(jx["pairs_per_sec"] * f, 3),
        "pytorch_peak_fraction": round(st["pairs_per_sec"] * f, 3),
        "dualenc_padding": jx["padded_token_fraction"],
        "pytorch_padding": jx.get("st_padded_token_fraction"),
    }


def _search_row(r: dict) -> dict:
    return {
        "unit": "queries/s (exact, 100k x 384)",
        "dualenc": r["exact"]["qps"],
        "pytorch": r["pytorch_exact"]["qps"],
        "ratio": r["pytorch_exact"]["dualenc_exact_speedup"],
    }


_RATE_KEYS = ("pairs_per_s", "pairs_per_sec", "docs_per_s", "tokens_per_s")


def _generic_row(r: dict) -> dict:
    """rerank.py's JSON: dualenc / PyTorch throughput and ratio under any of a few names."""
    row = {"unit": r.get("unit", "pairs/s")}
    if isinstance(r.get("dualenc"), dict):
        row["dualenc_padding"] = r["dualenc"].get("padded_token_fraction")
    for key, names in (
        ("dualenc", ("dualenc_pairs_per_s", "dualenc")),
        ("pytorch", ("pytorch_pairs_per_s", "sentence_transformers", "pytorch", "torch")),
        ("ratio", ("ratio", "speedup", "speedup_dualenc_over_st")),
    ):
        for n in names:
            v = r.get(n)
            if isinstance(v, dict):
                v = next(
                    (v[k] for k in ("pairs_per_s", "pairs_per_sec", "docs_per_s") if k in v), None
                )
            if isinstance(v, int | float):
                row[key] = v
                break
    return row


def table_row(name: str, r: dict, peak: float) -> dict:
    if "error" in r:
        return {"error": r["error"]}
    try:
        if name.startswith("encode"):
            return _encode_row(r, peak)
        if name.startswith("train"):
            return _train_row(r, peak)
        if name.startswith("search"):
            return _search_row(r)
        return _generic_row(r)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        return {"error": f"unexpected result JSON ({type(e).__name__}: {e})"}


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.1f} %"
    return f"{v:,.2f}" if isinstance(v, float) and v < 100 else f"{v:,.0f}"


def cpu_model() -> str:
    """The CPU's model name and vector extension (peak fractions differ across CPUs)."""
    try:
        info = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return platform.processor() or "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    ext = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "no AVX2"
    return f"{name or 'unknown'}, {ext}, {os.cpu_count()} cores"


def markdown(rows: dict[str, dict], peak: dict) -> str:
    head = (
        "| benchmark | unit | dualenc | PyTorch | ratio | GEMM peak: dualenc / PyTorch "
        "| padding: dualenc / PyTorch |\n|---|---|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | |")
            continue
        peak_cell = (
            f"{_fmt(r.get('dualenc_peak_fraction'), True)} / "
            f"{_fmt(r.get('pytorch_peak_fraction'), True)}"
        )
        pad = f"{_fmt(r.get('dualenc_padding'), True)} / {_fmt(r.get('pytorch_padding'), True)}"
        lines.append(
            f"| {name} | {r.get('unit', '')} | {_fmt(r.get('dualenc'))} | {_fmt(r.get('pytorch'))} "
            f"| **{_fmt(r.get('ratio'))}×** | {peak_cell} | {pad} |"
        )
    lines.append(
        f"\nf32 GEMM peak measured in the same run: {peak['peak_gflops']} GFLOP/s "
        f"(numpy {peak['numpy_gflops']}, JAX {peak['jax_gflops']}; 2048³ matmul); "
        f"CPU: {cpu_model()}."
    )
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    from dualenc.io import atomic_write, write_json

    load = os.getloadavg()
    peak = gemm_peak()
    print(f"GEMM peak {peak}", file=sys.stderr, flush=True)
    raw, rows = {}, {}
    for name, cmd in benchmarks().items():
        if FLAGS.only and name not in FLAGS.only:
            continue
        print(f"[bench] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        raw[name] = run_json(cmd)
        rows[name] = table_row(name, raw[name], peak["peak_gflops"])
        print(f"[bench] {name}: {rows[name]}", file=sys.stderr, flush=True)
    host = socket.gethostname()
    res = {
        "host": host,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "gemm": peak,
        "full_scifact": FLAGS.full,
        "table": rows,
        "raw": raw,
    }
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    write_json(os.path.join(FLAGS.out_dir, f"{host}.json"), res)
    md = markdown(rows, peak)
    with atomic_write(os.path.join(FLAGS.out_dir, f"{host}.md")) as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    app.run(main)
