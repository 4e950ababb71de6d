"""Peak memory of one train step, plain vs GradCache: does a big contrastive batch fit?

all-MiniLM-L6-v2 (real weights), 1 hard negative, q 32 / p 128 tokens (every token real), dropout
on, AdamW: the trainer's own step (`biencoder.step.make_train_step` +
`training.state.jit_train_step`) on one CPU device.
Each (mode, batch) runs in its own subprocess, which compiles the step once and reports XLA's
planned buffers (`compiled.memory_analysis()`: temp + arguments + outputs); if that plan is under
`--run_limit_gib` it also runs one step, and the parent reads the child's peak RSS
(`os.wait4` rusage ru_maxrss). Rungs planned above the limit are compiled only, so the ladder
up to 4,096 stays cheap and never pushes a shared machine into OOM; a plan above `--ram_gib`
does not fit. Prints one JSON object.

python benchmarks/memory.py [--batches 256,512,1024,2048,4096] [--chunk 128] [--run_limit_gib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GIB = 2**30


def child(mode: str, batch: int, chunk: int, run_limit: float, q_len: int, p_len: int) -> dict:
    """Compiles (and maybe runs) one step; returns the figures as a dict."""
    import jax
    import numpy as np

    from dualenc import sharding
    from dualenc.biencoder import model as bi_model
    from dualenc.biencoder import step as bi_step
    from dualenc.training import optim
    from dualenc.training import state as state_lib
    from dualenc.training.config import base_config, minilm_path

    c = base_config()
    c.model.name_or_path = minilm_path()
    c.data.num_negatives, c.data.q_max_length, c.data.p_max_length = 1, q_len, p_len
    c.train.batch_size, c.train.dropout = batch, True
    c.train.cache_chunk_size = chunk if mode == "cache" else 0
    base = bi_model.load_base_encoder(c.model)
    tx, schedule = optim.make_optimizer(c.train, 10)
    mesh = sharding.make_mesh((1, 1), devices=jax.devices()[:1])
    state, state_sh = state_lib.create_state(bi_model.initial_dual_params(base, True), tx, mesh, [])
    step = state_lib.jit_train_step(
        bi_step.make_train_step(c, base.spec, tx, schedule), state_sh, mesh
    )
    r = np.random.default_rng(0)
    pid = np.arange(batch * 2, dtype=np.int32).reshape(batch, 2)
    host = {
        "q_input_ids": r.integers(1000, 30000, (batch, q_len), dtype=np.int32),
        "q_attention_mask": np.ones((batch, q_len), np.int32),
        "p_input_ids": r.integers(1000, 30000, (batch, 2, p_len), dtype=np.int32),
        "p_attention_mask": np.ones((batch, 2, p_len), np.int32),
        "p_ids": pid,
        "q_pos_ids": pid[:, :1].copy(),
    }
    data = sharding.shard_batch(host, mesh)
    rng = jax.random.key(0, impl=c.train.rng_impl)
    t0 = time.perf_counter()
    compiled = step.lower(state, data, rng).compile()
    out = {"compile_s": round(time.perf_counter() - t0, 1)}
    m = compiled.memory_analysis()
    planned = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    out["xla_planned_gib"] = round(planned / GIB, 2)
    out["ran"] = planned / GIB <= run_limit
    if out["ran"]:
        t0 = time.perf_counter()
        _, metrics = compiled(state, data, rng)
        out["loss"] = float(jax.device_get(metrics["loss"]))
        out["step_s"] = round(time.perf_counter() - t0, 1)
    return out


def run_child(args, mode: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{mode}:{batch}"]
    cmd += [f"--{k}={getattr(args, k)}" for k in ("chunk", "run_limit_gib", "q_len", "p_len")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, whatever the caller simulates
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    res = {"mode": mode, "batch": batch, "wall_s": round(time.perf_counter() - t0, 1)}
    code = proc.returncode
    line = [x for x in stdout.splitlines() if x.startswith("{")]
    if code != 0 or not line:  # killed (OOM) or crashed: the rung does not fit
        res.update(ok=False, exit_code=code, error=stderr.strip().splitlines()[-1:])
    else:
        res.update(ok=True, **json.loads(line[-1]))
    res["peak_rss_gib"] = round(usage.ru_maxrss * 1024 / GIB, 2)  # ru_maxrss is in KiB
    res["fits"] = bool(res["ok"]) and res.get("xla_planned_gib", 1e9) <= args.ram_gib
    return res


def _max_batch(rows, mode: str, ram_gib: float) -> int | None:
    """The batch where XLA's plan (linear in the batch: fixed + per row) reaches `ram_gib`, from a
    least-squares line through the compiled rungs; None if it does not grow with the batch."""
    pts = [(r["batch"], r["xla_planned_gib"]) for r in rows if r["mode"] == mode and r["ok"]]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(b for b, _ in pts) / n, sum(g for _, g in pts) / n
    slope = sum((b - mx) * (g - my) for b, g in pts) / sum((b - mx) ** 2 for b, _ in pts)
    if slope <= 1e-6:
        return None
    return int((ram_gib - (my - slope * mx)) / slope)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="256,512,1024,2048,4096")
    ap.add_argument("--modes", default="plain,cache")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--q_len", type=int, default=32)
    ap.add_argument("--p_len", type=int, default=128)
    ap.add_argument("--run_limit_gib", type=float, default=8.0, help="run a step below this plan")
    ap.add_argument("--ram_gib", type=float, default=24.0, help="the machine's memory")
    ap.add_argument("--out", default="")
    ap.add_argument("--child", default="")
    args = ap.parse_args(argv)
    if args.child:
        mode, batch = args.child.split(":")
        res = child(mode, int(batch), args.chunk, args.run_limit_gib, args.q_len, args.p_len)
        print(json.dumps(res), flush=True)
        return res
    rows = []
    for mode in args.modes.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            rows.append(run_child(args, mode, b))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "model": "all-MiniLM-L6-v2",
        "hard_negatives": 1,
        "q_len": args.q_len,
        "p_len": args.p_len,
        "chunk": args.chunk,
        "ram_gib": args.ram_gib,
        "rows": rows,
        "max_batch_by_plan": {m: _max_batch(rows, m, args.ram_gib) for m in args.modes.split(",")},
        "largest_fitting_rung": {
            m: max([r["batch"] for r in rows if r["mode"] == m and r["fits"]], default=0)
            for m in args.modes.split(",")
        },
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
