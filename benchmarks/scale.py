"""Peak RSS and time of `dualenc.encode` and `dualenc.evaluate --index exact|bm25|scann` as the
corpus grows (10k, 100k, 1M passages), on 1 and 2 processes: does memory stay flat?

Corpus: the real passages of ../shared/data (MS MARCO subset, NQ-Open oracle, SciFact: 17k texts)
repeated, each copy's ids and texts given a suffix (unique ids, no duplicate texts); queries and
qrels: the MS MARCO subset's (its first copy holds their positives). Tower: a random 2-layer BERT
(hidden 64) with the MiniLM tokenizer, --max_length 128: the memory curve, not quality.
Every command runs in its own child process(es); the parent polls each child's peak RSS
(/proc/PID/status VmHWM, every 0.1 s) and the wall time. With 2 processes (a local JAX
cluster, gloo), each host's peak is reported. `--before /work/main` also runs `dualenc.encode`
from another checkout (the code before issue 25), and sentence-transformers encodes the same
corpus with the same tower (its own per-batch tokenisation; all texts held, as its users do):
ratios in the same run.

python benchmarks/scale.py --sizes 10000,100000 [--procs 1,2] [--before /work/main] [--st]
Prints one JSON object (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
SOURCES = (
    ("msmarco", "agentset-msmarco-subset/corpus.jsonl.gz"),
    ("nq", "nq-open-oracle/beir/corpus.jsonl"),
    ("scifact", "scifact/corpus.jsonl.gz"),
)


def _open(p: Path):
    return gzip.open(p, "rt", encoding="utf-8") if p.suffix == ".gz" else open(p, encoding="utf-8")


def base_passages(data: Path) -> list[tuple[str, str, str]]:
    """(id, title, text) of every real passage, prefixed by source."""
    out = []
    for name, rel in SOURCES:
        with _open(data / rel) as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    out.append((f"{name}-{d['_id']}", d.get("title") or "", d.get("text") or ""))
    return out


def make_corpus(data: Path, root: Path, n: int) -> Path:
    """A BEIR dir of n passages (copies of the real ones, suffixed) + MS MARCO queries/qrels."""
    root.mkdir(parents=True, exist_ok=True)
    base = base_passages(data)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            pid, title, text = base[i % len(base)]
            copy = i // len(base)
            if copy:
                pid, text = f"{pid}~{copy}", f"{text} ({copy})"
            f.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    ms = data / "agentset-msmarco-subset"
    shutil.copyfile(ms / "queries.jsonl", root / "queries.jsonl")
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"]
    for line in (ms / "qrels" / "test.tsv").read_text().splitlines():
        q, d, s = line.split("\t")
        lines.append(f"{q}\tmsmarco-{d}\t{s}")
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def make_tower(path: Path) -> Path:
    """A random 2-layer BERT (hidden 64) with the MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import minilm_dir  # noqa: PLC0415 - where the pip package keeps MiniLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(str(path))
    src = minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(src / name, path / name)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vm_hwm_gib(pid: int) -> float:
    """Peak resident set of process `pid` so far (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return 0.0


def measure(args: list[str], *, procs: int = 1, pythonpath: Path = REPO, timeout: int = 3600):
    """Runs `python -m args...` on `procs` processes; {'s', 'peak_rss_gib' per process, 'rc'}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALENC_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(pythonpath), TOKENIZERS_PARALLELISM="false")
    env["DUALENC_CACHE_DIR"] = os.environ.get("SCALE_CACHE", tempfile.mkdtemp())
    port, children = _free_port(), []
    t = time.time()
    for i in range(procs):
        e = dict(env)
        if procs > 1:
            e.update(
                DUALENC_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                DUALENC_NUM_PROCESSES=str(procs),
                DUALENC_PROCESS_ID=str(i),
            )
        log = open(tempfile.mktemp(suffix=".log"), "w+")  # noqa: SIM115 - read below
        children.append(
            (
                subprocess.Popen(
                    [sys.executable, *args], cwd=pythonpath, env=e, stdout=log, stderr=log
                ),
                log,
            )
        )
    peaks = {p.pid: 0.0 for p, _ in children}
    rcs: dict = {}
    while len(rcs) < procs:  # VmHWM of each child's own address space (ru_maxrss would carry
        for p, _ in children:  # over this parent's RSS at fork time: exec keeps the maximum)
            if p.pid in rcs:
                continue
            peaks[p.pid] = max(peaks[p.pid], _vm_hwm_gib(p.pid))
            if p.poll() is not None:
                rcs[p.pid] = p.returncode
        time.sleep(0.1)
    wall = time.time() - t
    out = {"s": round(wall, 1), "peak_rss_gib": [], "rc": []}
    for p, log in children:
        out["peak_rss_gib"].append(round(peaks[p.pid], 3))
        out["rc"].append(rcs[p.pid])
        if rcs[p.pid] != 0:
            log.seek(0)
            out["error"] = log.read()[-1500:]
        log.close()
    return out


def st_encode(model: Path, corpus: Path, max_length: int) -> list[str]:
    code = (
        "import json,sys\nfrom sentence_transformers import SentenceTransformer\n"
        f"m = SentenceTransformer({str(model)!r}, device='cpu'); m.max_seq_length = {max_length}\n"
        f"docs = [json.loads(l) for l in open({str(corpus)!r})]\n"
        "t = [(d['title'] + ' ' + d['text']).strip() for d in docs]\n"
        "e = m.encode(t, batch_size=64)\nprint(e.shape)\n"
    )
    return ["-c", code]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--indexes", default="exact,bm25,scann")
    ap.add_argument("--encode_only_sizes", default="", help="sizes run for encode only (1M)")
    ap.add_argument("--before", default="", help="another checkout: its dualenc.encode too")
    ap.add_argument("--st", action="store_true", help="sentence-transformers encode too")
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--work", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    data = Path(os.environ.get("DUALENC_DATA_DIR", REPO.parent / "shared" / "data"))
    work = Path(a.work or tempfile.mkdtemp(prefix="scale_"))
    model = make_tower(work / "tower") if not (work / "tower").exists() else work / "tower"
    sizes = [int(s) for s in a.sizes.split(",") if s]
    enc_only = [int(s) for s in a.encode_only_sizes.split(",") if s]
    procs = [int(p) for p in a.procs.split(",") if p]
    res: dict = {"max_length": a.max_length, "tower": "random BERT 2x64", "runs": []}

    def record(**kw):
        res["runs"].append(kw)
        print(json.dumps(kw), file=sys.stderr, flush=True)

    for n in sorted(set(sizes + enc_only)):
        root = make_corpus(data, work / f"c{n}", n)
        common = ["--model", str(model), "--max_length", str(a.max_length), "--progress=false"]
        for p in procs:
            out = work / f"enc{n}-{p}"
            shutil.rmtree(out, ignore_errors=True)
            r = measure(
                [
                    "-m",
                    "dualenc.encode",
                    *common,
                    "--input",
                    str(root / "corpus.jsonl"),
                    "--output_dir",
                    str(out),
                    "--shard_size",
                    "32768",
                ],
                procs=p,
            )
            record(n=n, command="encode", procs=p, **r)
        if a.before and n in sizes:
            r = measure(
                [
                    "-m",
                    "dualenc.encode",
                    *common,
                    "--input",
                    str(root / "corpus.jsonl"),
                    "--output",
                    str(work / f"before{n}.npy"),
                ],
                pythonpath=Path(a.before),
            )
            record(n=n, command="encode (before: main)", procs=1, **r)
        if a.st and n in sizes:
            r = measure(st_encode(model, root / "corpus.jsonl", a.max_length))
            record(n=n, command="sentence-transformers encode", procs=1, **r)
        if n not in sizes:
            continue
        for p in procs:
            cache = tempfile.mkdtemp(prefix=f"cache{n}-{p}-", dir=work)
            for kind in a.indexes.split(","):
                if p > 1 and kind == "bm25":
                    continue  # BM25 does not shard over hosts
                shutil.rmtree(work / f"ev{n}-{p}-{kind}", ignore_errors=True)  # no stale metrics
                args = ["-m", "dualenc.evaluate", *common, "--data", str(root), "--split", "test"]
                args += ["--index", kind, "--output", str(work / f"ev{n}-{p}-{kind}")]
                args += ["--cache_dir", cache, "--k", "100"]
                r = measure(args, procs=p)
                m = work / f"ev{n}-{p}-{kind}" / "metrics.json"
                nd = json.loads(m.read_text())["nDCG@10"] if m.exists() else None
                record(n=n, command=f"evaluate --index {kind}", procs=p, ndcg10=nd, **r)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
