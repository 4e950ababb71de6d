"""Reports: one system's Markdown summary, and a comparison of several evaluation dirs.

    python -m dualenc.report --runs bm25=DIR1 --runs dense=DIR2 --output OUT

reads each DIR/metrics.json and DIR/curve.json (written by `dualenc.evaluate`) and writes
OUT/report.md (table: Top-k answer accuracy when every system has it, else R@k; nDCG@10, RR@10)
and OUT/recall.png (the curves against k).

    python -m dualenc.report --pipeline --data data/nq-toy --dense_model M --rerank_model CE \
        --output OUT [--split test --rerank_top 500 --keep 100]

runs the seed pipeline (BM25, dense, dense → cross-encoder, BM25 + dense → CE ensemble) and
writes OUT/report.md, OUT/pipeline.png and OUT/metrics.json; see `dualenc.pipeline_report`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dualenc import multihost
from dualenc.io import InputError, atomic_write

TABLE_KS = (5, 20, 50, 100)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_single_report(path, metrics: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """Markdown summary of one evaluation: setup, then one row of metrics."""
    keys = [k for k in metrics if k != "num_queries"]
    data = Path(str(info.get("data", "?")))
    name = data.parent.name if data.name == "beir" else data.name  # nq-open-oracle/beir
    lines = [f"# {info.get('system', '?')} on {name} ({info.get('split', '?')})", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in info.items() if k not in ("tune_scores",)]
    if "tune_scores" in info:
        lines.append(f"- tune scores ({info.get('tune_split')}): {info['tune_scores']}")
    lines += [
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(_fmt(metrics[k]) for k in keys) + " |",
        "",
    ]
    with atomic_write(path) as f:
        f.write("\n".join(lines))


def load_system(directory) -> tuple[dict[str, Any], dict[str, float]]:
    """(metrics, curve) of one evaluation dir."""
    d = multihost.epath(directory)
    out = []
    for name in ("metrics.json", "curve.json"):
        if not (d / name).exists():
            raise InputError(f"missing {name} (not a dualenc.evaluate output dir?)", path=d)
        out.append(json.loads((d / name).read_text()))
    return out[0], out[1]


def comparison_table(systems: Mapping[str, tuple[dict, dict]]) -> str:
    """Markdown table, one row per system; Top-k = answer accuracy if all have it, else R@k."""
    use_acc = all(any(k.startswith("Acc@") for k in c) for _, c in systems.values())
    prefix, label = ("Acc@", "Top-{} acc") if use_acc else ("R@", "R@{}")
    cols = [label.format(k) for k in TABLE_KS] + ["nDCG@10", "RR@10"]
    lines = ["| system | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, (m, c) in systems.items():
        vals = [c.get(f"{prefix}{k}", m.get(f"{prefix}{k}")) for k in TABLE_KS]
        vals += [m.get("nDCG@10"), m.get("RR@10")]
        lines.append(
            f"| {name} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in vals) + " |"
        )
    return "\n".join(lines) + "\n"


def recall_plot(systems: Mapping[str, tuple[dict, dict]], path) -> None:
    """PNG of R@k (or answer accuracy) against k, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_acc = all(any(k.startswith("Acc@") for k in c) for _, c in systems.values())
    prefix = "Acc@" if use_acc else "R@"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (_, c) in systems.items():
        pts = sorted((int(k[len(prefix) :]), v) for k, v in c.items() if k.startswith(prefix))
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("top-k answer accuracy" if use_acc else "Recall@k")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def compare(runs: Mapping[str, str], output) -> str:
    """Writes output/report.md and output/recall.png for {name: eval dir}; returns the table."""
    if not runs:
        raise InputError("no runs given (use --runs name=DIR)")
    systems = {name: load_system(d) for name, d in runs.items()}
    table = comparison_table(systems)
    out = multihost.epath(output)  # local or gs://
    with atomic_write(out / "report.md") as f:
        f.write("# Retrieval comparison\n\n" + table + "\n![recall](recall.png)\n")
    recall_plot(systems, out / "recall.png")
    return table


def _parse_runs(items) -> dict[str, str]:
    runs = {}
    for item in items:
        name, sep, d = item.partition("=")
        if not sep or not name or not d:
            raise InputError(f"--runs wants name=DIR, got {item!r}", field="runs")
        runs[name] = d
    return runs


def _pipeline(f) -> str:
    from dualenc import pipeline_report  # imported here: it imports dualenc.evaluate

    for key in ("data", "dense_model", "rerank_model"):
        if not f[key].value:
            raise InputError(f"--pipeline needs --{key}", field=key)
    table, _ = pipeline_report.run_pipeline(
        f.data,
        f.dense_model,
        f.rerank_model,
        f.output,
        split=f.split,
        rerank_top=f.rerank_top,
        keep=f.keep,
        batch_size=f.batch_size,
        max_length=f.max_length,
        cache=f.cache,
        cache_dir=f.cache_dir,
    )
    return (multihost.epath(f.output) / "report.md").read_text() if multihost.is_main() else ""


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        if f.pipeline:
            multihost.initialize()
            print(_pipeline(f))
        else:
            print(compare(_parse_runs(f.runs), f.output))
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import flags

    from dualenc import cli

    flags.DEFINE_multi_string("runs", [], "name=DIR of a dualenc.evaluate output (repeatable).")
    flags.DEFINE_string("output", "report", "Output dir for report.md and recall.png.")
    flags.DEFINE_boolean("pipeline", False, "Run the seed pipeline report instead (below).")
    flags.DEFINE_string("data", "", "--pipeline: BEIR dir whose queries carry metadata.answers.")
    flags.DEFINE_string("dense_model", "", "--pipeline: bi-encoder dir / hub id (dense stage).")
    flags.DEFINE_string("rerank_model", "", "--pipeline: cross-encoder dir (reranks dense).")
    flags.DEFINE_string("split", "test", "--pipeline: qrels split whose queries are asked.")
    flags.DEFINE_integer("rerank_top", 500, "--pipeline: dense docs rescored per query.")
    flags.DEFINE_integer("keep", 100, "--pipeline: docs kept per query and system (the table).")
    flags.DEFINE_integer("batch_size", 64, "--pipeline: encode / rerank batch size.")
    flags.DEFINE_integer("max_length", 0, "--pipeline: dense max length (0: the model's).")
    flags.DEFINE_boolean("cache", True, "--pipeline: use the dualenc cache (--nocache: off).")
    flags.DEFINE_string("cache_dir", "", "--pipeline: cache dir ('': the default).")
    cli.run(main)
