"""Where the time goes: per-op-class profile of dualenc (XLA:CPU) vs PyTorch, same process.

all-MiniLM-L6-v2 forward at 32 x 256 tokens and the MNRL train step at 32 x (32 + 128) tokens
(AdamW, dropout on, random token ids). XLA: a `jax.profiler` perfetto trace, whose per-thunk events
are named after the compiled HLO instructions; each instruction is put in a class from its opcode
and the Flax module path in its metadata. PyTorch: `torch.profiler` self CPU time per event, put in
the same classes by op name and shape. Prints JSON, then a Markdown table (ms per call).

    python benchmarks/op_profile.py [--repeats 3] [--xla_flags=...] [--out profile.json]
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

flags.DEFINE_integer("repeats", 3, "Profiled calls per workload (after one warm-up call).")
flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for dualenc (set before JAX starts).")
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads.")
flags.DEFINE_string("out", "", "Also write the JSON here.")
flags.DEFINE_bool("skip_torch", False, "Profile dualenc only.")
FLAGS = flags.FLAGS

CLASSES = (
    "QKV/out-proj matmul",
    "FFN matmul",
    "attention bmm (score/mix)",
    "softmax + mask",
    "LayerNorm",
    "GELU",
    "bias add/grad",
    "dropout RNG",
    "transpose/copy",
    "embedding gather",
    "optimizer update",
    "loss + other",
)
_INST = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (\(.*?\)|\S+) ([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_ARGS = re.compile(r"%([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')
_DOTS = {"dot", "convolution"}
_CONTAINERS = {"call", "while", "conditional", "async-start", "async-done"}  # children traced too
_MOVES = {"transpose", "copy", "bitcast", "reshape", "broadcast", "concatenate", "slice"}
_MOVES |= {"dynamic-slice", "dynamic-update-slice", "pad", "copy-start", "copy-done"}


def parse_hlo(text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, shape, names: op_names inside it, ops: opcodes inside}."""
    comps, cur, entry = {}, None, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            cur = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            entry = cur if line.startswith("ENTRY") else entry
            comps[cur] = []
            continue
        m = _INST.match(line)
        if m and cur is not None:
            name, shape, op, rest = m.groups()
            args = _ARGS.findall(rest.split("calls=")[0])
            comps[cur].append((name, shape, op, _CALLS.findall(rest), _OPNAME.findall(rest), args))
    out = {}
    order = [c for c in comps if c != entry] + [entry]  # ENTRY's names win a clash
    for comp in (comps[c] for c in order if c is not None):
        for name, shape, op, calls, names, args in comp:
            ops, inner = {op}, list(names)
            dots = list(names) if op in _DOTS else []
            for c in calls:
                for _, _, op2, _, names2, _ in comps.get(c, ()):
                    ops.add(op2)
                    inner += names2
                    dots += names2 if op2 in _DOTS else []
            out[name] = {"opcode": op, "shape": shape, "names": inner, "ops": ops, "dots": dots}
            out[name]["args"] = args
    for inst in out.values():  # XLA's split reductions carry no module path: use the input's
        if not any("/" in n for n in inst["names"]):
            inst["names"] += [n for a in inst["args"][:1] for n in out.get(a, {}).get("names", ())]
    return out


def classify_hlo(inst: dict, param_shapes: set[str]) -> str:
    """The op class of one compiled HLO instruction (fusion: by what it contains)."""
    ops, text = inst["ops"], " ".join(inst["names"])
    if ops & _DOTS or "custom-call" in ops and "matmul" in text.lower():
        text = " ".join(inst["dots"]) or text  # weight grads: '.../dense/transpose'
        if "attention/self" in text and ("bnij" in text or "bind" in text):
            return "attention bmm (score/mix)"
        if re.search(r"(query|key|value|attention/output/dense)/(dot_general|transpose)", text):
            return "QKV/out-proj matmul"
        if re.search(r"(intermediate/dense|output/dense|ffn|lin\d)/(dot_general|transpose)", text):
            return "FFN matmul"
        return "loss + other"
    if "custom-call" in ops and re.search(r"/(query|key|value|dense)/", text):  # kernels/dense.cc
        if re.search(r"/(query|key|value)/|attention/output/dense/", text):  # dW and db at once
            return "QKV/out-proj matmul"
        return "FFN matmul"
    if ops & {"rng-bit-generator", "rng"}:
        return "dropout RNG"
    for key, cls in (
        ("random_bits", "dropout RNG"),
        ("rng_bit_generator", "dropout RNG"),
        ("threefry", "dropout RNG"),
        ("Dropout", "dropout RNG"),
        ("LayerNorm", "LayerNorm"),
        ("layer_norm", "LayerNorm"),
        ("erf", "GELU"),
        ("gelu", "GELU"),
        ("intermediate/tanh", "GELU"),
        ("/dense/", "bias add/grad"),
        ("/lin", "bias add/grad"),
    ):
        if key in text:
            return cls
    if "attention/self" in text or "/attention/" in text and "softmax" in text:
        return "softmax + mask"
    if "embeddings" in text and ops & {"gather", "scatter"}:
        return "embedding gather"
    if ops <= _MOVES | {"parameter", "constant", "tuple", "get-tuple-element"}:
        return "transpose/copy"
    if "embeddings" in text:
        return "embedding gather"
    if "BertModel" not in text and set(re.findall(r"f32\[[\d,]*\]", inst["shape"])) & param_shapes:
        return "optimizer update"
    return "loss + other"


def trace_times(trace_dir: str, names: set[str]) -> dict[str, float]:
    """Summed duration (us) per HLO instruction name from the perfetto trace json."""
    path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
    with gzip.open(sorted(path)[-1]) as f:
        events = json.load(f)["traceEvents"]
    # A thunk that runs asynchronously (dots on the thread pool) has a short start event and an
    # "end: NAME" event when its work completes: its time is start -> end of that second event.
    tot, open_ = collections.Counter(), {}
    for e in sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"]):
        name = e.get("name", "")
        if name in names:  # names: no container thunks
            if name in open_:
                tot[name] += open_[name][1]
            open_[name] = (e["ts"], float(e.get("dur", 0.0)))
        elif name.startswith("end: ") and name[5:] in open_:
            start, _ = open_.pop(name[5:])
            tot[name[5:]] += e["ts"] + float(e.get("dur", 0.0)) - start
    for name, (_, dur) in open_.items():
        tot[name] += dur
    return tot


def _to_wall(per: collections.Counter, wall_ms: float) -> collections.Counter:
    """Class times scaled to sum to the unprofiled wall time. Thunks run concurrently on the
    thread pool (and async dots' spans include queueing), so raw spans overlap; their shares
    are what is comparable. `busy_ms` keeps the raw sum."""
    total = sum(per.values())
    out = collections.Counter({k: v * wall_ms / total for k, v in per.items()} if total else per)
    out["busy_ms"] = total
    return out


def profile_jax(fn, args, repeats: int, param_shapes: set[str]) -> dict:
    """ms per call per class, plus wall ms per call, for the jitted `fn(*args)`."""
    import jax

    compiled = fn.lower(*args).compile()
    insts = parse_hlo(compiled.as_text())
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    wall = (time.perf_counter() - t) / repeats
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(repeats):
                jax.block_until_ready(fn(*args))
        times = trace_times(d, {k for k, v in insts.items() if v["opcode"] not in _CONTAINERS})
    per = collections.Counter()
    for name, us in times.items():
        per[classify_hlo(insts[name], param_shapes)] += us / 1e3 / repeats
    per = _to_wall(per, wall * 1e3)
    top = sorted(times.items(), key=lambda kv: -kv[1])[:12]
    cls = {k: classify_hlo(insts[k], param_shapes) for k, _ in top}
    return {
        "wall_ms": wall * 1e3,
        "classes_ms": {c: round(per[c], 2) for c in CLASSES},
        "busy_ms": round(per["busy_ms"], 1),
        "top_instructions_ms": {f"{k} ({cls[k]})": round(v / 1e3 / repeats, 2) for k, v in top},
    }


def jax_workloads(model_dir: str, repeats: int) -> dict:
    """Profiles the dualenc encode step (32 x 256) and MNRL train step (32 x (32 + 128))."""
    import jax

    from benchmarks.train_step import dualenc_config
    from dualenc import sharding
    from dualenc.biencoder import model as bi_model
    from dualenc.biencoder import step as bi_step
    from dualenc.inference.encode import encode_step
    from dualenc.models.loading import load_encoder
    from dualenc.training import optim
    from dualenc.training import state as state_lib

    rng = np.random.RandomState(0)
    enc = load_encoder(model_dir)
    pshapes = {"f32[" + ",".join(map(str, x.shape)) + "]" for x in jax.tree.leaves(enc.params)} - {
        "f32[384]"
    }  # a (384,) vector is also a per-row loss/pooling shape; leave it out
    ids = rng.randint(1000, 20000, (32, 256)).astype(np.int32)
    fwd = profile_jax(encode_step(enc.spec), (enc.params, ids, np.ones_like(ids)), repeats, pshapes)
    c = dualenc_config(model_dir, 32, 128)
    base = bi_model.load_base_encoder(c.model)
    tx, schedule = optim.make_optimizer(c.train, 1000)
    mesh = state_lib.build_mesh(c)
    state, sh = state_lib.create_state(
        bi_model.initial_dual_params(base, True), tx, mesh, state_lib.mesh_rules(c)
    )
    step = state_lib.jit_train_step(bi_step.make_train_step(c, base.spec, tx, schedule), sh, mesh)
    b = {
        "q_input_ids": rng.randint(1000, 20000, (32, 32)).astype(np.int32),
        "p_input_ids": rng.randint(1000, 20000, (32, 1, 128)).astype(np.int32),
        "p_ids": np.arange(32, dtype=np.int32)[:, None],
        "q_pos_ids": np.arange(32, dtype=np.int32)[:, None],
    }
    b["q_attention_mask"] = np.ones_like(b["q_input_ids"])
    b["p_attention_mask"] = np.ones_like(b["p_input_ids"])
    batch, key = sharding.shard_batch(b, mesh), jax.random.key(0, impl=c.train.rng_impl)
    holder = {"state": state}

    def run(_batch, _key):  # donates the state: thread it through the repeats
        holder["state"], m = step(holder["state"], _batch, _key)
        return m

    run.lower = lambda *a: step.lower(holder["state"], *a)
    train = profile_jax(run, (batch, key), repeats, pshapes)
    return {"forward_32x256": fwd, "train_step_32x(32+128)": train}


def classify_torch(name: str, shapes, in_optimizer: bool) -> str:
    """The op class of one aten op (self time), by name and input shapes."""
    n = name.lower()
    if in_optimizer:
        return "optimizer update"
    dims = {d for s in shapes or () for d in (s or ())}
    if any(k in n for k in ("addmm", "aten::mm", "aten::linear")):
        if 1536 in dims:
            return "FFN matmul"
        square = [384, 384] in [list(x) for x in shapes or ()]  # a (H, H) weight or its grad
        token_rows = 384 in dims and max(dims) >= 512  # (tokens, H) activations: weight grads
        return "QKV/out-proj matmul" if square or token_rows else "loss + other"
    for keys, cls in (
        (("bmm", "matmul", "scaled_dot_product", "flash_attention"), "attention bmm (score/mix)"),
        (("softmax", "masked_fill", "aten::where"), "softmax + mask"),
        (("layer_norm",), "LayerNorm"),
        (("gelu",), "GELU"),
        (("dropout", "bernoulli"), "dropout RNG"),
        (("embedding", "index_select"), "embedding gather"),
        (("transpose", "permute", "contiguous", "clone", "copy_", "view", "reshape"), "copy"),
        (("expand", "aten::t", "cat", "unsafe_view", "as_strided", "split"), "copy"),
    ):
        if any(k in n for k in keys):
            return "transpose/copy" if cls == "copy" else cls
    return "loss + other"


def profile_torch(fn, repeats: int) -> dict:
    """ms per call per class from torch.profiler self CPU times (events under the optimizer's
    step record_function count as its update)."""
    import torch

    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    wall = (time.perf_counter() - t) / repeats
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, record_shapes=True) as prof:
        for _ in range(repeats):
            fn()
    per, top = collections.Counter(), collections.Counter()
    prof_events = prof.events()
    for e in prof_events:
        p, in_opt = e, False
        while p is not None and not in_opt:
            in_opt = p.name.startswith("Optimizer.step")
            p = p.cpu_parent
        if e.name.startswith("Optimizer.") or not e.name.startswith("aten::"):
            continue
        cls = classify_torch(e.name, e.input_shapes, in_opt)
        per[cls] += e.self_cpu_time_total / 1e3 / repeats
        top[e.name] += e.self_cpu_time_total / 1e3 / repeats
    per = _to_wall(per, wall * 1e3)
    return {
        "wall_ms": wall * 1e3,
        "classes_ms": {c: round(per[c], 2) for c in CLASSES},
        "busy_ms": round(per["busy_ms"], 1),
        "top_ops_ms": {k: round(v, 2) for k, v in top.most_common(8)},
    }


def torch_workloads(model_dir: str, repeats: int) -> dict:
    """sentence-transformers forward (inference mode) and MNRL + AdamW step, random ids."""
    import torch
    from sentence_transformers import SentenceTransformer, losses

    torch.set_num_threads(FLAGS.torch_threads)
    g = torch.Generator().manual_seed(0)
    st = SentenceTransformer(model_dir, device="cpu")

    def feats(n, length):
        ids = torch.randint(1000, 20000, (n, length), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    f32 = feats(32, 256)
    st.eval()

    def forward():
        with torch.inference_mode():
            st(dict(f32))

    fwd = profile_torch(forward, repeats)
    st.train()
    loss_fn = losses.MultipleNegativesRankingLoss(st, scale=20.0)
    opt = torch.optim.AdamW(st.parameters(), lr=2e-5, weight_decay=0.01)
    q, p = feats(32, 32), feats(32, 128)

    def train():
        loss = loss_fn([dict(q), dict(p)], None)
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_res = profile_torch(train, repeats)
    return {"forward_32x256": fwd, "train_step_32x(32+128)": train_res}


def markdown(res: dict) -> str:
    """One table: per class ms per call (scaled to the wall time), dualenc vs PyTorch."""
    work = list(res["dualenc"])
    head = "| op class | " + " | ".join(f"{w}: dualenc ms | PyTorch ms" for w in work) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(work)]
    for cls in (*CLASSES, "wall (unprofiled)", "traced busy time (raw)"):
        cells = []
        for w in work:
            for side in ("dualenc", "pytorch"):
                r = res.get(side, {}).get(w)
                if r is None:
                    cells.append("")
                elif cls.startswith("traced busy"):
                    cells.append(f"{r['busy_ms']:.1f}")
                elif cls == "wall (unprofiled)":
                    cells.append(f"{r['wall_ms']:.1f}")
                else:
                    cells.append(f"{r['classes_ms'][cls]:.1f}")
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if FLAGS.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAGS.xla_flags}".strip()
    import configs

    model_dir = configs.minilm_path()
    res = {"dualenc": jax_workloads(model_dir, FLAGS.repeats)}
    res["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    if not FLAGS.skip_torch:
        res["pytorch"] = torch_workloads(model_dir, FLAGS.repeats)
    res["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(res, indent=2)
    if FLAGS.out:
        from dualenc.io import write_json

        write_json(FLAGS.out, res)
    print(text)
    print(markdown(res))


if __name__ == "__main__":
    app.run(main)
