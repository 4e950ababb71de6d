"""Pure parts of the benchmark driver and profiler (HLO and torch op classes, table rows), and
benchmarks/accelerator.py: its FLOP count, chip peaks, budget plan and a CPU dry run."""

from __future__ import annotations

import collections
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


profile = _load("op_profile")
run_all = _load("run_all")
accelerator = _load("accelerator")


def _named(f, name):
    def g(*a):
        with jax.named_scope(name):
            return f(*a)

    return g


def test_hlo_classes_of_a_compiled_block():
    """Each op of a small attention + FFN block lands in its class (metadata or opcode)."""

    def block(x, w_q, w_ff):
        q = _named(lambda x: x @ w_q, "attention/self/query")(x)  # (B, L, H)
        s = _named(
            lambda q: jnp.einsum("bind,bjnd->bnij", q[..., None], q[..., None]), "attention/self"
        )(q)
        p = _named(lambda s: jax.nn.softmax(s, -1), "attention/self")(s)
        h = _named(lambda x: x @ w_ff, "intermediate/dense")(x)
        h = _named(jax.nn.gelu, "intermediate")(h)
        return p, _named(lambda h: h @ w_ff.T, "output/dense")(h)

    args = (jnp.ones((2, 8, 4)), jnp.ones((4, 4)), jnp.ones((4, 16)))
    insts = profile.parse_hlo(jax.jit(block).lower(*args).compile().as_text())
    classes = {profile.classify_hlo(i, set()) for i in insts.values()}
    assert {"QKV/out-proj matmul", "FFN matmul", "softmax + mask", "GELU"} <= classes
    dots = [i for i in insts.values() if i["opcode"] == "dot"]
    assert dots and all(profile.classify_hlo(i, set()) != "loss + other" for i in dots)


def test_native_kernel_calls_are_classed_by_their_layer():
    """dense.cc's gradient call goes with its layer's matmuls, the attention kernel with softmax."""

    def call(path):
        return {"ops": {"custom-call"}, "names": [f"jit(step)/{path}/ffi_call"], "dots": [],
                "shape": "f32[384,384]"}  # fmt: skip

    c = profile.classify_hlo
    assert c(call("encoder/layer/0/attention/self/query"), set()) == "QKV/out-proj matmul"
    assert c(call("encoder/layer/0/attention/output/dense"), set()) == "QKV/out-proj matmul"
    assert c(call("encoder/layer/0/intermediate/dense"), set()) == "FFN matmul"
    assert c(call("encoder/layer/0/output/dense"), set()) == "FFN matmul"
    assert c(call("encoder/layer/0/attention/self"), set()) == "softmax + mask"


def test_torch_op_classes():
    c = profile.classify_torch
    assert c("aten::addmm", [[8192, 384], [384, 1536]], False) == "FFN matmul"
    assert c("aten::addmm", [[384], [8192, 384], [384, 384]], False) == "QKV/out-proj matmul"
    assert c("aten::mm", [[32, 384], [384, 32]], False) == "loss + other"
    assert c("aten::_softmax", [], False) == "softmax + mask"
    assert c("aten::native_layer_norm_backward", [], False) == "LayerNorm"
    assert c("aten::gelu", [], False) == "GELU"
    assert c("aten::addcdiv_", [], True) == "optimizer update"
    assert c("aten::transpose", [], False) == "transpose/copy"


def test_table_rows_and_markdown():
    enc = {
        "mean_tokens_per_doc": 200.0,
        "speedup_dualenc_over_st": 0.9,
        "max_abs_diff_vs_st": 2e-7,
        "dualenc": {"tokens_per_s": 9000, "padded_token_fraction": 0.05},
        "sentence_transformers": {"tokens_per_s": 10000, "padded_token_fraction": 0.2},
    }
    row = run_all.table_row("encode_scifact", enc, peak=200.0)
    flop = run_all.flop_per_token(200.0)
    assert row["ratio"] == 0.9 and row["pytorch_padding"] == 0.2
    np.testing.assert_allclose(row["dualenc_peak_fraction"], 9000 * flop / 200e9, atol=1e-3)
    train = {
        "ratio": 1.5,
        "dualenc": {
            "pairs_per_sec": 15.0,
            "padded_token_fraction": 0.1,
            "real_tokens_per_pair": 100,
        },
        "sentence_transformers_mnrl": {"pairs_per_sec": 10.0},
    }
    assert run_all.table_row("train_packed", train, 200.0)["ratio"] == 1.5
    broken = run_all.table_row("encode_mixed_packed", {"dualenc": {}}, 200.0)
    assert "error" in broken
    rerank = run_all.table_row("rerank", {"dualenc": {"pairs_per_s": 50}, "ratio": 1.1}, 200.0)
    assert rerank["dualenc"] == 50 and rerank["ratio"] == 1.1
    rows = {"encode_scifact": row, "rerank": rerank, "x": {"error": "exit 1"}}
    md = run_all.markdown(rows, {"peak_gflops": 200.0, "numpy_gflops": 190.0, "jax_gflops": 200.0})
    assert "| encode_scifact | tokens/s | 9,000 | 10,000 | **0.90×** |" in md
    assert "| x | exit 1 |" in md and "200.0 GFLOP/s" in md


def test_trace_times_pairs_async_end_events(tmp_path):
    """An async thunk's time runs from its start event to the end of its 'end: NAME' event."""
    events = [
        {"ph": "X", "name": "dot.1", "ts": 0.0, "dur": 1.0},  # async: ends at 'end: dot.1'
        {"ph": "X", "name": "fusion", "ts": 2.0, "dur": 3.0},  # sync
        {"ph": "X", "name": "end: dot.1", "ts": 9.0, "dur": 1.0},
        {"ph": "X", "name": "call.1", "ts": 0.0, "dur": 50.0},  # a container: not counted
        {"ph": "X", "name": "dot.1", "ts": 20.0, "dur": 2.0},  # second call, no end event
    ]
    d = tmp_path / "plugins" / "op_profile" / "run"
    d.mkdir(parents=True)
    with gzip.open(d / "host.perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    times = profile.trace_times(str(tmp_path), {"dot.1", "fusion"})
    assert times == {"dot.1": 12.0, "fusion": 3.0}
    scaled = profile._to_wall(collections.Counter(times), wall_ms=30.0)
    assert scaled["busy_ms"] == 15.0 and scaled["dot.1"] == 24.0 and scaled["fusion"] == 6.0


def test_model_flops_matches_a_hand_count():
    """2 layers, H 4, FFN 8, texts of 3 and 5 tokens: every matmul of the forward counted."""
    layers, h, i, lens = 2, 4, 8, [3, 5]
    forward = 0
    for t in lens:
        per_layer = 4 * (2 * t * h * h)  # Q, K, V and output projections: (T, H) @ (H, H)
        per_layer += 2 * t * h * i + 2 * t * i * h  # FFN up (H -> I) and down (I -> H)
        per_layer += 2 * t * t * h + 2 * t * t * h  # scores Q Kᵀ (all heads) and P V
        forward += layers * per_layer
    assert forward == 2 * 256 * 8 + 4 * 2 * 4 * (9 + 25) == 5184
    assert accelerator.model_flops(layers, h, i, lens) == forward
    assert accelerator.model_flops(layers, h, i, lens, train=True) == 3 * forward
    assert accelerator.model_flops(layers, h, i, [4]) != accelerator.model_flops(
        layers, h, i, [2, 2]
    )


def test_chip_peaks_by_device_kind():
    peak = accelerator.chip_peak
    assert peak("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert peak("NVIDIA H100 PCIe")[0] == 756e12
    assert peak("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert peak("TPU v5 lite")[0] == 197e12
    assert peak("TPU v5")[0] == 459e12
    assert peak("TPU v4")[0] == 275e12
    value, why = peak("NVIDIA L4")
    assert value is None and "NVIDIA L4" in why
    assert accelerator.mfu(3e12, 2.0, 1e12) == 1.5 and accelerator.mfu(1.0, 1.0, None) is None


def test_accelerator_plan_budget_and_table():
    """Priority order; a measurement that no longer fits is skipped with a reason; an error is
    recorded, not raised; the table and markdown still come out of the partial results."""
    a = accelerator.parse_args(["--dry_run", "--dtypes=bfloat16,float32", "--train=nq:32,nq:48"])
    names = [n for n, _, _ in accelerator.plan(a, "cuda")]
    assert names == [
        "encode_dualenc_bfloat16", "encode_st_float16", "train_dualenc_nq_32",
        "encode_dualenc_float32", "encode_st_float32", "train_st_nq_32",
        "train_dualenc_nq_48", "train_st_nq_48",
    ]  # fmt: skip
    assert not any("_st_" in n for n, _, _ in accelerator.plan(a, None))  # TPU / no torch
    now = [0.0]

    def fake(seconds, result):
        def fn(ctx):
            now[0] += seconds
            if isinstance(result, Exception):
                raise result
            return dict(result)

        return fn

    items = [
        ("encode_dualenc_float32", "encode", fake(10, {"tokens_per_s": 200.0, "mfu": 0.5})),
        ("encode_st_float32", "st_encode", fake(5, RuntimeError("CUDA out of memory"))),
        ("train_dualenc_nq_32", "train", fake(30, {"pairs_per_s": 9.0, "step_s": 0.9})),
        ("encode_dualenc_bfloat16", "encode", fake(10, {})),  # 10 s measured, 5 s left: skip
    ]
    ctx = {"start": 0.0}
    res, skipped = accelerator.run_plan(items, ctx, 50.0, {"train": 20.0}, clock=lambda: now[0])
    assert res["encode_st_float32"]["error"] == "RuntimeError: CUDA out of memory"
    assert res["train_dualenc_nq_32"]["wall_s"] == 30.0
    assert [s["name"] for s in skipped] == ["encode_dualenc_bfloat16"]
    assert "5 s left of 50" in skipped[0]["reason"]
    full = {
        "measurements": res,
        "skipped": skipped,
        "torch": "2.x",
        "jax": "0.x",
        "torch_info": {"device": "cpu"},
        "settings": {"dtypes": ["float32"], "train": [["nq", 32]], "batch_size": 8,
                     "max_length": 64, "train_batch": 8, "train_dtype": "float32"},
        "device": {"kind": "cpu", "platform": "cpu", "peak_flops": None, "mfu_null_reason": "x"},
    }  # fmt: skip
    full["table"] = accelerator.table(full)
    enc, _, train = full["table"]
    assert enc["dualenc"] == 200.0 and enc["pytorch"] is None and enc["ratio"] is None
    assert train["step_ms"] == 900.0 and train["dualenc"] == 9.0
    md = accelerator.markdown(full)
    assert "| encode_scifact | ? docs, batch 8, len 64 | float32 / float32 |" in md
    assert "Skipped: encode_dualenc_bfloat16" in md


@pytest.mark.slow
@pytest.mark.data
def test_accelerator_dry_run(tmp_path, minilm_path):
    """benchmarks/accelerator.py --dry_run end to end (CPU, tiny sizes): every field of the
    JSON, on stdout and in --out, with sane values; what the GPU / TPU run will print."""
    out = tmp_path / "accel.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as on a GPU
    cmd = [sys.executable, str(BENCH / "accelerator.py"), "--dry_run", f"--out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == res
    assert res["benchmark"] == "accelerator" and res["dry_run"] is True
    dev = res["device"]
    assert dev["kind"] == "cpu" and dev["count"] == 1 and dev["peak_flops"] is None
    assert "CPU" in dev["mfu_null_reason"]
    assert res["jax"] and res["torch"] not in ("", "unavailable"), res["torch_info"]
    assert res["skipped"] == [] and res["wall_s"] > 0
    assert set(res["settings"]) >= {"batch_size", "max_length", "dtypes", "train", "steps", "docs"}
    m = res["measurements"]
    assert set(m) == {
        "encode_dualenc_float32", "encode_st_float32", "train_dualenc_nq_32", "train_st_nq_32"
    }  # fmt: skip
    assert not [k for k, v in m.items() if "error" in v], m
    enc, st = m["encode_dualenc_float32"], m["encode_st_float32"]
    assert enc["docs"] == 64 and enc["real_tokens"] > 64 * 2
    assert enc["model_flops"] >= 2 * 6 * (4 * 384**2 + 2 * 384 * 1536) * enc["real_tokens"]
    for r in (enc, st):
        assert r["tokens_per_s"] > 0 and r["device_tokens_per_s"] > 0
        assert r["mfu"] is None and r["device_mfu"] is None
        assert 0 <= r["padded_token_fraction"] < 1
    assert st["max_abs_diff_vs_dualenc"] < 1e-4  # same docs, same order, same model
    train = m["train_dualenc_nq_32"]
    assert train["steps"] == 2 and train["step_s"] > 0 and train["model_flops_per_step"] > 0
    assert train["real_tokens_per_step"] > 0 and np.isfinite(train["loss"])
    assert m["train_st_nq_32"]["step_s"] > 0
    names = [r["benchmark"] for r in res["table"]]
    assert names == ["encode_scifact", "encode_scifact_device", "train_nq_32"]
    for row in res["table"]:
        assert row["dualenc"] > 0 and row["pytorch"] > 0 and row["ratio"] > 0
        assert row["dualenc_mfu"] is None and row["pytorch_mfu"] is None
    assert "| encode_scifact_device |" in proc.stderr and "mfu is null" in proc.stderr


def test_scale_corpus_ids_unique_and_rss_measured(tmp_path, shared_data):
    """benchmarks/scale.py: the repeated corpus has unique ids and texts, the MS MARCO qrels
    point into it, and a child's peak RSS is read back (a 300 MiB buffer shows)."""
    scale = _load("scale")
    root = scale.make_corpus(shared_data, tmp_path / "c", 20_000)
    rows = [json.loads(line) for line in (root / "corpus.jsonl").open()]
    assert len(rows) == 20_000 == len({r["_id"] for r in rows})
    texts = [(r["title"], r["text"]) for r in rows]
    assert len(set(texts)) > 0.99 * len(texts)
    ids = {r["_id"] for r in rows}
    qrels = (root / "qrels" / "test.tsv").read_text().splitlines()[1:]
    assert qrels and all(line.split("\t")[1] in ids for line in qrels)
    fill = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
    big = scale.measure(["-c", fill + "import time; time.sleep(0.5)"])
    small = scale.measure(["-c", "import time; time.sleep(0.5)"])
    assert big["rc"] == [0] and 0.28 < big["peak_rss_gib"][0] < 0.35
    assert small["peak_rss_gib"][0] < 0.05  # not this (pytest) process's RSS at fork time


compile_table = _load("compile_table")


class _Plan:
    """A compile's report on a linear memory plan (fixed + per-query bytes, 16 GiB chips); past
    `cap` bytes XLA rematerialises by itself and the plan stops growing, as XLA:GPU's does."""

    def __init__(self, batch, fixed, per_query, cap=None):
        self.need_bytes = fixed + per_query * batch
        self.xla_remat_ops = 0
        if cap is not None and self.need_bytes > cap:
            self.need_bytes, self.xla_remat_ops = cap + (self.need_bytes - cap) * 0.02, 40
        self.hbm_bytes = 16 * 2**30
        self.model_flops = 1e12 * batch
        self.xla_flops_per_chip = 0.0
        self.roofline_seconds = 1e-3 * batch


@pytest.mark.parametrize(
    "target, fixed_gib, per_query_mib, cap_gib, compiles",
    [
        ("tpu:v5e-16", 0.3, 100.0, None, 3),
        ("tpu:v5e-16", 4.0, 27.0, None, 3),
        ("tpu:v5e-16", 1.0, 900.0, None, 3),
        ("tpu:v5e-16", 10.0, 100.0, None, 3),  # guess 16 fits; need / batch overestimates
        ("gpu:h100x8", 0.5, 45.0, 12.2, 3),  # XLA remats above 12.2 GiB: flat, never trusted
        ("gpu:h100x8", 0.5, 45.0, 9.0, 4),  # ... and under the budget: aim below its plan
    ],
)
def test_compile_table_finds_the_largest_fitting_batch(
    monkeypatch, target, fixed_gib, per_query_mib, cap_gib, compiles
):
    """The line walk lands on the largest multiple of 8 that fits the budget as planned (not
    rematerialised by XLA), in <= 3 compiles, and only reports a batch it compiled and saw fit (a
    walk that stops at a first guess, trusts a plan XLA squeezed, or reports the extrapolation
    instead is red)."""
    fixed, per_query = fixed_gib * 2**30, per_query_mib * 2**20
    cap = cap_gib * 2**30 if cap_gib else None
    compiled = []

    def fake(model, setting, target, size):
        compiled.append(size)
        return _Plan(size, fixed, per_query, cap)

    monkeypatch.setattr(compile_table, "compile_at", fake)
    monkeypatch.setattr(compile_table, "_hbm", lambda target: 16.0 * 2**30)
    cell = compile_table.largest_batch("m", "bf16", target, lambda msg: None, (), compiles)
    limit = min(compile_table.budget(target), cap or float("inf"))
    best = int((limit - fixed) // per_query) // 8 * 8
    assert cell["per_chip_batch"] == best, (compiled, best)
    assert best in compiled and len(compiled) <= compiles
    assert fixed + per_query * cell["per_chip_batch"] <= limit


def test_compile_table_first_guess_from_priors(monkeypatch):
    monkeypatch.setattr(compile_table, "_hbm", lambda t: (32.0 if "v4" in t else 16.0) * 2**30)
    prior = [
        {"model": "m", "setting": "bf16", "target": "tpu:v5e-16", "per_chip_batch": 32,
         "hbm_gib": 16.0, "slope_bytes": 5.0},
    ]  # fmt: skip
    assert compile_table.first_guess("m", "bf16", "tpu:v4-32", prior) == (64, 5.0)
    assert compile_table.first_guess("m", "bf16", "gpu:h100x8", prior)[1] is None  # no slope
    assert compile_table.first_guess("m", "bf16+remat", "tpu:v5e-16", prior) == (96, None)
    assert compile_table.first_guess("other", "bf16", "tpu:v5e-16", prior) == (16, None)
