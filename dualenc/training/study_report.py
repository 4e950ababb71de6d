"""The study's report: mean +- std over seeds per strategy, a Markdown table and a bar plot.

Kept apart from the runs (`training.study`) so that `--report_only` and tests tabulate finished
runs without touching the training code path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualenc import io


def summarize(results: list[dict], cfg) -> dict:
    """{strategy: {n, mean/std of each measure on dev and test, seconds, hparams}}."""
    out: dict[str, dict] = {}
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r)
    for name, rs in by.items():
        row = {"n": len(rs), "seeds": [r["seed"] for r in rs], "hparams": rs[0]["hparams"]}
        for split in ("dev", "test"):
            for m in rs[0][split]:
                vals = np.array([r[split][m] for r in rs], float)
                row[f"{split}/{m}"] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0))}
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in rs]))
        row["eval_seconds"] = float(np.mean([r["eval_seconds"] for r in rs]))
        row["description"] = str(cfg.strategies[name].get("description", ""))
        out[name] = row
    return {"num_steps": int(cfg.num_steps), "strategies": out, "runs": results}


def _pm(row: dict, key: str) -> str:
    v = row.get(key)
    return "–" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"


def format_table(summary: dict, cfg) -> str:
    """The Markdown table: one row per strategy, mean ± std (population std) over seeds."""
    main = list(cfg.table_measures)
    head = ["strategy", "seeds"] + [f"test {m}" for m in main] + [f"dev {cfg.dev_measure}"]
    head += ["train s", "eval s", "hyper-parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary["strategies"].items():
        hp = ", ".join(f"{k}={v}" for k, v in row["hparams"].items()) or "–"
        cells = [f"{name}", str(row["n"])] + [_pm(row, f"test/{m}") for m in main]
        cells += [_pm(row, f"dev/{cfg.dev_measure}")]
        cells += [f"{row['train_seconds']:.0f}", f"{row['eval_seconds']:.0f}", hp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(workdir: Path, summary: dict, cfg) -> None:
    """W/study.json, W/study.md (table + descriptions), W/study.png (bars with std errors)."""
    io.write_json(workdir / "study.json", summary)
    desc = "\n".join(
        f"- **{n}**: {r['description']}"
        for n, r in summary["strategies"].items()
        if r["description"]
    )
    text = (
        f"# {cfg.title}\n\n{cfg.notes}\n\nAll trained runs: {summary['num_steps']} steps. "
        f"Mean ± std over seeds.\n\n{format_table(summary, cfg)}\n\n{desc}\n"
    )
    with io.atomic_write(workdir / "study.md") as f:
        f.write(text)
    _plot(workdir / "study.png", summary, list(cfg.table_measures))


def _plot(path: Path, summary: dict, measures: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["strategies"])
    fig, axes = plt.subplots(1, len(measures), figsize=(5 * len(measures), 4), squeeze=False)
    for ax, m in zip(axes[0], measures, strict=True):
        rows = [summary["strategies"][n].get(f"test/{m}") or {"mean": 0, "std": 0} for n in names]
        ax.bar(names, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=4)
        lo = min(r["mean"] for r in rows)
        ax.set_ylim(max(0.0, lo - 0.1), min(1.0, max(r["mean"] for r in rows) + 0.05))
        ax.set_title(f"test {m}")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
