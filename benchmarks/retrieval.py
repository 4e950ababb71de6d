"""Retrieval quality table: BM25 / dense / hybrid with all-MiniLM-L6-v2 on the shared BEIR sets.

Usage: python benchmarks/retrieval.py [--datasets scifact,nq-open-oracle,clapnq,agentset]
       [--systems bm25,exact,hybrid] [--out DIR]

Each cell is one `dualenc.evaluate` run (configs/eval/beir_minilm.py:NAME,SYSTEM); the corpus
embeddings are cached, so dense and hybrid encode each corpus once. Hybrid weights are tuned on
SciFact's train queries; the other sets have no training split, so they fuse with the default
weight 1.0 (min-max normalised), untuned. Prints one JSON object and writes OUT/table.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

flags.DEFINE_list("datasets", ["scifact", "nq-open-oracle", "clapnq", "agentset"], "Datasets.")
flags.DEFINE_list("systems", ["bm25", "exact", "hybrid"], "Systems (exact|scann|bm25|hybrid).")
flags.DEFINE_string("out", "/tmp/dualenc_eval/table", "Where table.md and the runs go.")
FLAGS = flags.FLAGS

COLUMNS = ("nDCG@10", "RR@10", "R@100", "Acc@5", "Acc@20", "Acc@100")


def markdown(results: dict[str, dict[str, dict]]) -> str:
    """One row per (dataset, system); '-' where a metric does not apply."""
    lines = [
        "| dataset | system | " + " | ".join(COLUMNS) + " | hybrid weight |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for name, systems in results.items():
        for system, r in systems.items():
            cells = [f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "-" for c in COLUMNS]
            w = r.get("hybrid_weight")
            cells.append("-" if w is None else str(w))  # a tuned weight may be 0.0
            lines.append(f"| {name} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from configs.eval import beir_minilm
    from dualenc.io import atomic_write
    from dualenc.retrieval.evaluate import run_evaluation

    out = Path(FLAGS.out)
    results: dict[str, dict[str, dict]] = {}
    for name in FLAGS.datasets:
        for system in FLAGS.systems:
            cfg = beir_minilm.get_config(f"{name},{system}")
            with cfg.unlocked():
                cfg.output = str(out / f"{name}_{system}")
                cfg.progress = False
            metrics = run_evaluation(cfg)
            info = json.loads((Path(cfg.output) / "info.json").read_text())
            results.setdefault(name, {})[system] = {
                "metrics": {k: round(v, 4) for k, v in metrics.items() if k != "num_queries"},
                "num_queries": metrics["num_queries"],
                "num_docs": info["num_docs"],
                "hybrid_weight": info.get("hybrid_weight"),
                "tune_split": info.get("tune_split"),
            }
            print(f"{name} {system}: nDCG@10 {metrics['nDCG@10']:.4f}", file=sys.stderr)
    with atomic_write(out / "table.md") as f:
        f.write(markdown(results))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
