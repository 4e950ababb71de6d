"""Reports on evaluation outputs (the library behind `python -m dualenc.report`): one system's
Markdown summary (`write_single_report`, written by `retrieval.evaluate`), and a comparison of
several evaluation dirs (`compare`: OUT/report.md with a table, OUT/recall.png with the curves).
The seed pipeline report is `retrieval.pipeline_report`.
"""

from __future__ import annotations

import json
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
