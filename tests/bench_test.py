"""Pure parts of the benchmark driver and profiler: HLO and torch op classes, table rows."""

from __future__ import annotations

import collections
import gzip
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


profile = _load("op_profile")
run_all = _load("run_all")


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
