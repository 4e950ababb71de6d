"""Serving under load: `python -m dualenc.serve` vs the same retrieval written the straightforward
way (sentence-transformers `encode` per request + numpy top-k, and `CrossEncoder.predict` for the
rerank, inside the same FastAPI/uvicorn), in one run, on loopback.

Usage: python benchmarks/serve.py --index DIR [--requests 2000] [--concurrency 1,8,32]
                                  [--rerank_requests 32] [--rerank_top 20] [--rerank_model CE]
                                  [--client raw|httpx]

DIR: the SciFact index built with all-MiniLM-L6-v2 (README "Serving"). Queries: SciFact test
queries, cycled. Each server runs in its own process; both are started and warmed up, then
loaded in turn at each concurrency (dualenc, baseline, next level), so that they share the
machine's load as closely as a shared machine allows (the 1-minute load average is recorded
with each figure); RSS is each server process's, before the first load and after the last.
Modes: `exact` (retrieval alone, k 10) and `rerank` (exact top 20 -> cross-encoder; the CE is
--rerank_model, else all-MiniLM-L6-v2 + a fresh seeded head built by benchmarks/rerank.py:
no trained cross-encoder is available offline, and its speed does not depend on training).
Prints one JSON; --markdown also prints the table for docs/results.md on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
flags.DEFINE_string("index", "workdirs/scifact_index", "Index dir (SciFact, all-MiniLM-L6-v2).")
flags.DEFINE_integer("requests", 2000, "Requests per concurrency level, retrieval alone.")
flags.DEFINE_integer("rerank_requests", 32, "Requests per concurrency level with reranking.")
flags.DEFINE_list("concurrency", ["1", "8", "32"], "Concurrent clients.")
flags.DEFINE_list("modes", ["exact", "rerank"], "exact (retrieval alone) and/or rerank.")
flags.DEFINE_string("rerank_model", "", "Cross-encoder dir (default: MiniLM + fresh head).")
flags.DEFINE_integer("rerank_top", 20, "First-stage hits the cross-encoder rescores.")
flags.DEFINE_integer("rerank_max_length", 256, "Tokens per (query, doc) pair, both stacks.")
flags.DEFINE_integer("k", 10, "Hits per query.")
flags.DEFINE_string("ce_work_dir", "/tmp/dualenc_bench_rerank", "Where the default CE is built.")
flags.DEFINE_bool("skip_baseline", False, "Time dualenc only.")
flags.DEFINE_enum("client", "raw", ["raw", "httpx"], "Load generator (RawClient or httpx).")
flags.DEFINE_bool("markdown", False, "Also print markdown tables on stderr.")
# internal: this script is also the baseline server
flags.DEFINE_bool("baseline_server", False, "Run the sentence-transformers server (internal).")
flags.DEFINE_integer("port", 0, "Port of --baseline_server (internal).")
FLAGS = flags.FLAGS


def baseline_app(index: str, rerank_model: str, rerank_top: int, max_length: int):
    """The straightforward server: per request, ST encode + numpy top-k (+ CrossEncoder)."""
    import numpy as np
    import torch
    from fastapi import FastAPI
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from dualenc.data.beir import load_corpus
    from dualenc.index import load_doc_ids, read_manifest
    from dualenc.inference.encode import beir_doc_text

    torch.set_num_threads(2)
    m = read_manifest(index)
    emb = np.load(Path(index) / "embeddings.npy")  # (N, D) as dualenc saved it
    ids = load_doc_ids(index)
    corpus = load_corpus(m.corpus_path, allow_empty=True)
    model = SentenceTransformer(m.model_source, device="cpu")
    ce = CrossEncoder(rerank_model, device="cpu", max_length=max_length) if rerank_model else None
    api = FastAPI()

    @api.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @api.post("/search")
    def search(req: dict):
        q = model.encode([req["query"]], convert_to_numpy=True, show_progress_bar=False)[0]
        depth = max(req.get("k", 10), rerank_top if ce else 0)
        scores = emb @ q
        top = np.argpartition(-scores, depth)[:depth]
        top = top[np.argsort(-scores[top], kind="stable")]
        hits = [(ids[i], float(scores[i])) for i in top]
        if ce is not None and req.get("rerank", True):
            head = hits[:rerank_top]
            docs = [beir_doc_text(corpus[d]) for d, _ in head]
            pairs = [(req["query"], t) for t in docs]
            ce_scores = ce.predict(pairs, batch_size=32, show_progress_bar=False)
            order = np.argsort(-ce_scores, kind="stable")
            hits = [(head[i][0], float(ce_scores[i])) for i in order] + hits[rerank_top:]
        k = req.get("k", 10)
        return {"hits": [{"doc_id": d, "title": corpus[d].title, "score": s} for d, s in hits[:k]]}

    return api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(system: str, port: int, rerank_model: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if system == "dualenc":
        cmd = [sys.executable, "-m", "dualenc.serve", "--index", FLAGS.index, "--port", str(port)]
        if rerank_model:
            cmd += ["--rerank_model", rerank_model, "--rerank_top", str(FLAGS.rerank_top)]
            cmd += ["--rerank_max_length", str(FLAGS.rerank_max_length)]
    else:
        cmd = [sys.executable, __file__, "--baseline_server", "--index", FLAGS.index]
        cmd += ["--port", str(port), "--rerank_model", rerank_model]
        cmd += ["--rerank_top", str(FLAGS.rerank_top)]
        cmd += ["--rerank_max_length", str(FLAGS.rerank_max_length)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 1800) -> float:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("server did not come up")


class RawClient:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a load generator that costs
    ~0.2 ms of CPU per request where httpx's AsyncClient costs ~1.8 ms. On a 2-core machine
    the client shares the cores with the server, so a heavy client measures itself: with httpx,
    dualenc's p99 at concurrency 32 reads ~90 ms higher than the server's own timing shows."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader = self.writer = None

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            length = [
                x.split(b":", 1)[1] for x in lines if x.lower().startswith(b"content-length:")
            ]
            if not length:
                raise ValueError("no Content-Length")
            return int(lines[0].split()[1]), await self.reader.readexactly(int(length[0]))
        except BaseException:
            self.close()  # a broken exchange: the next request reconnects
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(
    url: str, queries: list[str], n: int, conc: int, body: dict, server_pid: int = 0
) -> dict:
    """n POST /search at `conc` in flight (one connection each, --client): queries/s, p50/p99
    latency (ms), errors, and the CPU milliseconds per request of the server and of this client
    (on 2 cores they share)."""
    import httpx
    import numpy as np
    import psutil

    def cpu(pid: int) -> float:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system

    lat, errors, nxt = [], 0, iter(range(n))
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:

        async def post(raw: RawClient | None, payload: dict) -> tuple[int, bytes]:
            if raw is not None:
                return await raw.post("/search", payload)
            r = await c.post("/search", json=payload)
            return r.status_code, r.content

        async def worker():
            nonlocal errors
            raw = RawClient(url) if FLAGS.client == "raw" else None
            for i in nxt:
                t = time.perf_counter()
                try:
                    status, data = await post(raw, {"query": queries[i % len(queries)], **body})
                    ok = status == 200 and json.loads(data)["hits"]
                except (httpx.HTTPError, OSError, ValueError, asyncio.IncompleteReadError):
                    ok = False
                lat.append(time.perf_counter() - t)
                errors += not ok
            if raw is not None:
                raw.close()

        cpu0 = (cpu(server_pid) if server_pid else 0.0), cpu(os.getpid())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall = time.perf_counter() - t0
        cpu1 = (cpu(server_pid) if server_pid else 0.0), cpu(os.getpid())
    ms = np.array(lat) * 1e3
    return {
        "requests": n,
        "qps": round(n / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": errors,
        "server_cpu_ms": round((cpu1[0] - cpu0[0]) * 1e3 / n, 2) if server_pid else None,
        "client_cpu_ms": round((cpu1[1] - cpu0[1]) * 1e3 / n, 2),
    }


BAD_REQUESTS = [  # (input, path, body): the server's default limits (k ≤ 100, 2,048 characters)
    ("malformed JSON", "/search", b'{"query": "fever", '),
    ("body not an object", "/search", b'["fever"]'),
    ("empty body", "/search", b""),
    ("missing query", "/search", b'{"k": 5}'),
    ("empty query", "/search", b'{"query": ""}'),
    ("blank query", "/search", b'{"query": "   "}'),
    ("query not a string", "/search", b'{"query": ["fever"]}'),
    ("k = 0", "/search", b'{"query": "fever", "k": 0}'),
    ("k = 1000", "/search", b'{"query": "fever", "k": 1000}'),
    ("k a string", "/search", b'{"query": "fever", "k": "ten"}'),
    ("unknown field", "/search", b'{"query": "fever", "index": "/etc/passwd"}'),
    ("query of 3,000 characters", "/search", json.dumps({"query": "a " * 1500}).encode()),
    ("1 MB query", "/search", json.dumps({"query": "a" * (1 << 20)}).encode()),
    ("non-UTF-8 bytes", "/search", b'{"query": "fi\xe8vre"}'),
    ("rerank without a cross-encoder", "/search", b'{"query": "fever", "rerank": true}'),
    ("batch: no queries", "/search/batch", b'{"queries": []}'),
    ("batch: 65 queries", "/search/batch", json.dumps({"queries": ["a"] * 65}).encode()),
    ("batch: one blank", "/search/batch", b'{"queries": ["fever", " "]}'),
]


def bad_requests(url: str) -> list[dict]:
    """Each bad input's status and error line, then whether /healthz still answers 200."""
    import httpx

    rows = []
    for what, path, body in BAD_REQUESTS:
        r = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"})
        rows.append({"input": what, "status": r.status_code, "error": r.json().get("error")})
    rows.append(
        {"input": "GET /healthz afterwards", "status": httpx.get(url + "/healthz").status_code}
    )
    return rows


def run_mode(systems: list[str], mode: str, queries: list[str], rerank_model: str) -> dict:
    """Starts every system's server, then loads them in turn at each concurrency (dualenc, then
    the baseline, at c=1, then both at c=8, ...), so that both see the same machine load."""
    import httpx
    import psutil

    n = FLAGS.requests if mode == "exact" else FLAGS.rerank_requests
    body = {"k": FLAGS.k} if mode == "exact" else {"k": FLAGS.k, "rerank": True}
    procs, urls, out = {}, {}, {}
    try:
        for system in systems:
            port = free_port()
            urls[system] = f"http://127.0.0.1:{port}"
            procs[system] = start(system, port, rerank_model if mode == "rerank" else "")
            ready_s = wait_ready(urls[system], procs[system])
            asyncio.run(load(urls[system], queries, 16, 4, body))  # warm the HTTP path
            rss = psutil.Process(procs[system].pid).memory_info().rss
            out[system] = {"startup_s": round(ready_s, 1), "rss_before_mb": round(rss / 2**20, 1)}
        for c in FLAGS.concurrency:
            for system in systems:
                r = asyncio.run(load(urls[system], queries, n, int(c), body, procs[system].pid))
                r["loadavg_1m"] = round(os.getloadavg()[0], 2)
                out[system][f"c{c}"] = r
                print(f"{system} {mode} c={c}: {r}", file=sys.stderr, flush=True)
        for system in systems:
            o = out[system]
            o["rss_after_mb"] = round(
                psutil.Process(procs[system].pid).memory_info().rss / 2**20, 1
            )
            o["rss_growth_pct"] = round(100 * (o["rss_after_mb"] / o["rss_before_mb"] - 1), 2)
        if "dualenc" in urls:
            info = httpx.get(urls["dualenc"] + "/info").json()
            out["dualenc"]["compiles_during_load"] = info["compiles"]["since_ready"]
            out["dualenc"]["compiles_at_warm_up"] = info["compiles"]["warm_up"]
            out["dualenc"]["batch_sizes"] = info["served"]["batch_sizes"]  # all levels together
            if mode == "exact":
                out["dualenc"]["bad_requests"] = bad_requests(urls["dualenc"])
        return out
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(60)


def scifact_queries() -> list[str]:
    from dualenc.io import data_dir, read_jsonl

    root = data_dir() / "scifact"
    judged = {
        ln.split("\t")[0] for ln in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]
    }
    return [o["text"] for _, o in read_jsonl(root / "queries.jsonl") if o["_id"] in judged]


def markdown(res: dict) -> str:
    head = "| mode | server | concurrency | queries/s | p50 ms | p99 ms | errors | RSS (MB) |"
    rows = [head]
    rows.append("|---|---|---|---|---|---|---|---|")
    for mode, systems in res["modes"].items():
        for system, r in systems.items():
            if system == "qps_ratio":
                continue
            for c in FLAGS.concurrency:
                x = r[f"c{c}"]
                mem = f"{r['rss_before_mb']} → {r['rss_after_mb']} ({r['rss_growth_pct']:+.1f} %)"
                rows.append(
                    f"| {mode} | {system} | {c} | {x['qps']} | {x['p50_ms']} | {x['p99_ms']} | "
                    f"{x['errors']} | {mem} |"
                )
    for systems in res["modes"].values():
        if "bad_requests" in systems.get("dualenc", {}):
            rows += ["", "| input | status | error |", "|---|---|---|"]
            for r in systems["dualenc"]["bad_requests"]:
                rows.append(f"| {r['input']} | {r['status']} | {r.get('error') or ''} |")
    return "\n".join(rows)


def main(argv):
    del argv
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    if FLAGS.baseline_server:
        import uvicorn

        api = baseline_app(
            FLAGS.index, FLAGS.rerank_model, FLAGS.rerank_top, FLAGS.rerank_max_length
        )
        uvicorn.run(api, host="127.0.0.1", port=FLAGS.port, log_level="warning")
        return
    rerank_model = FLAGS.rerank_model
    if "rerank" in FLAGS.modes and not rerank_model:
        sys.path.insert(0, str(Path(__file__).parent))
        from rerank import default_model  # noqa: PLC0415 - its flags stay unused here

        rerank_model = default_model(FLAGS.ce_work_dir)
    queries = scifact_queries()
    res = {
        "benchmark": "serve",
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "index": FLAGS.index,
        "queries": len(queries),
        "rerank_model": rerank_model if "rerank" in FLAGS.modes else None,
        "rerank_top": FLAGS.rerank_top,
        "client": FLAGS.client,
        "modes": {},
    }
    systems = ["dualenc"] + ([] if FLAGS.skip_baseline else ["baseline"])
    for mode in FLAGS.modes:
        res["modes"][mode] = run_mode(systems, mode, queries, rerank_model)
        if not FLAGS.skip_baseline:
            d, b = res["modes"][mode]["dualenc"], res["modes"][mode]["baseline"]
            res["modes"][mode]["qps_ratio"] = {
                f"c{c}": round(d[f"c{c}"]["qps"] / b[f"c{c}"]["qps"], 2) for c in FLAGS.concurrency
            }
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res, indent=1))
    if FLAGS.markdown:
        print(markdown(res), file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
