"""Peak RSS and time of `dualenc.evaluate --index bm25 --nocache` as the corpus grows: this
checkout (the streamed builder, issue 25) against `--before` (another checkout: bm25s's
in-memory index, which holds every document's tokens as Python lists).

Corpus, queries and child-process measurement (VmHWM polled every 0.1 s) are `scale.py`'s; the
index is built without the cache, so every run builds it. Both checkouts must give the same
nDCG@10 (the streamed index's scores are bit-identical).

python benchmarks/bm25_rss.py --sizes 10000,100000 --before /work/main [--out FILE]
Prints one JSON object (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import REPO, make_corpus, measure  # noqa: E402 - the sibling benchmark's helpers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--before", default="", help="another checkout (the in-memory build)")
    ap.add_argument("--work", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    data = Path(os.environ.get("DUALENC_DATA_DIR", REPO.parent / "shared" / "data"))
    work = Path(a.work or tempfile.mkdtemp(prefix="bm25_rss_"))
    checkouts = [("after", REPO)] + ([("before", Path(a.before))] if a.before else [])
    runs = []
    for n in (int(s) for s in a.sizes.split(",") if s):
        root = make_corpus(data, work / f"c{n}", n)
        for name, checkout in checkouts:
            out = work / f"ev{n}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            args = ["-m", "dualenc.evaluate", "--data", str(root), "--split", "test"]
            args += ["--index", "bm25", "--nocache", "--k", "100", "--output", str(out)]
            r = measure(args, pythonpath=checkout)
            m = out / "metrics.json"
            info = out / "info.json"
            r["ndcg10"] = json.loads(m.read_text())["nDCG@10"] if m.exists() else None
            r["bm25_build_s"] = json.loads(info.read_text())["bm25_build_s"] if m.exists() else None
            runs.append({"n": n, "code": name, **r})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    text = json.dumps({"command": "evaluate --index bm25 --nocache", "runs": runs}, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
