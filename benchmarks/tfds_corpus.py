"""TFDS corpora: build time, peak RSS and read throughput, against loading the corpus whole.

Why: a corpus of millions of passages must build and read in flat memory. For each size N a
BEIR corpus.jsonl of N passages is made from the real passages in $DUALENC_DATA_DIR (MS MARCO
subset, NQ-Open, CLAP-NQ, SciFact; cycled with fresh ids, as issue 25 did); then, each in its
own process (peak RSS from os.wait4's ru_maxrss):
  build     `python -m dualenc.build_tfds --format=beir` (streamed into array_record shards)
  read      TfdsCorpus: random ranges of --range_rows rows (passages/s), then a full scan in
            chunks of 4,096 (passages/s), each row decoded to (id, Doc)
  whole     the in-memory path BEIR's GenericDataLoader takes (`dualenc.data.beir.load_corpus`:
            the whole corpus as a dict), the baseline for time and memory
  floor     an interpreter that only imports dualenc.data.tfds_corpus (the fixed cost)
Prints one JSON object.

    python benchmarks/tfds_corpus.py [--sizes 10000,100000] [--range_rows 256] [--ranges 400]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MIB = 2**20
SOURCES = (
    "agentset-msmarco-subset/corpus.jsonl.gz",
    "nq-open-oracle/beir/corpus.jsonl",
    "clapnq/beir/corpus.jsonl",
    "scifact/corpus.jsonl.gz",
)


def real_passages(data_dir: Path) -> list[dict]:
    out = []
    for rel in SOURCES:
        path = data_dir / rel
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                obj = json.loads(line)
                out.append({"title": obj.get("title") or "", "text": obj["text"]})
    return out


def make_corpus(path: Path, n: int, passages: list[dict]) -> int:
    """N passages cycled from the real ones, each with a fresh id; returns the file's bytes."""
    with open(path, "w", encoding="utf-8") as f:
        for i, p in zip(range(n), itertools.cycle(passages), strict=False):
            f.write(json.dumps({"_id": f"p{i}", **p}, ensure_ascii=False) + "\n")
    return path.stat().st_size


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, stdout) of a child process (its own rusage, from os.wait4)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{args} failed:\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def child(cmd: str, path: str, range_rows: int, ranges: int) -> None:
    """Runs one measured step in this (child) process and prints its JSON."""
    import numpy as np

    if cmd == "floor":
        import dualenc.data.tfds_corpus  # noqa: F401

        print(json.dumps({}))
        return
    if cmd == "whole":
        from dualenc.data.beir import load_corpus

        t0 = time.perf_counter()
        corpus = load_corpus(path, allow_empty=True)
        print(json.dumps({"docs": len(corpus), "load_s": time.perf_counter() - t0}))
        return
    from dualenc.data.tfds_corpus import TfdsCorpus

    t0 = time.perf_counter()
    corpus = TfdsCorpus(path)
    n, opened = len(corpus), time.perf_counter() - t0
    starts = np.random.default_rng(0).integers(0, n - range_rows, ranges)
    t0 = time.perf_counter()
    for s in starts:
        ids, _ = corpus.read(int(s), int(s) + range_rows)
        assert ids[0] == f"p{s}"  # the row asked for, in order
    random_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, n, 4096):
        corpus.read(s, s + 4096)
    scan_s = time.perf_counter() - t0
    print(json.dumps({
        "open_s": round(opened, 3),
        "random_ranges_passages_per_s": round(ranges * range_rows / random_s),
        "scan_passages_per_s": round(n / scan_s),
        "scan_s": round(scan_s, 2),
    }))  # fmt: skip


def measure(n: int, tmp: Path, passages: list[dict], a) -> dict:
    src, out = tmp / f"corpus_{n}.jsonl", tmp / f"tfds_{n}"
    src_bytes = make_corpus(src, n, passages)
    py, me = sys.executable, [sys.executable, __file__, "--child"]
    build_s, build_rss, _ = run([py, "-m", "dualenc.build_tfds", f"--src={src}",
                                 "--format=beir", f"--out={out}", "--name=bench"])  # fmt: skip
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    _, read_rss, read_out = run([*me, "read", str(out), str(a.range_rows), str(a.ranges)])
    whole_s, whole_rss, whole_out = run([*me, "whole", str(src), "0", "0"])
    src.unlink()
    return {
        "passages": n,
        "jsonl_mib": round(src_bytes / MIB, 1),
        "tfds_mib": round(size / MIB, 1),
        "build_s": round(build_s, 2),
        "build_passages_per_s": round(n / build_s),
        "build_peak_rss_mib": round(build_rss),
        "read": json.loads(read_out),
        "read_peak_rss_mib": round(read_rss),
        "whole_load_s": round(json.loads(whole_out)["load_s"], 2),
        "whole_peak_rss_mib": round(whole_rss),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--range_rows", type=int, default=256)
    p.add_argument("--ranges", type=int, default=400)
    p.add_argument("--child", nargs=4, metavar=("CMD", "PATH", "ROWS", "RANGES"))
    a = p.parse_args()
    if a.child:
        cmd, path, rows, ranges = a.child
        return child(cmd, path, int(rows), int(ranges))
    from dualenc.io import data_dir

    passages = real_passages(data_dir())
    _, floor_rss, _ = run([sys.executable, __file__, "--child", "floor", "-", "0", "0"])
    with tempfile.TemporaryDirectory() as d:
        rows = [measure(int(n), Path(d), passages, a) for n in a.sizes.split(",")]
    print(json.dumps({"real_passages": len(passages), "import_floor_rss_mib": round(floor_rss),
                      "range_rows": a.range_rows, "sizes": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
