"""The seed pipeline report: BM25, dense, dense → cross-encoder, and their 1:1 ensemble.

    python -m dualenc.report --pipeline --data data/nq-toy --dense_model M --rerank_model CE \\
        --output DIR [--split test --rerank_top 500 --keep 100]

On a BEIR dir whose queries carry `metadata.answers` (nq-toy), four systems answer the split's
judged queries: BM25; dense (exact search with --dense_model); dense → CE (the dense top
`rerank_top` rescored by the cross-encoder, the top `keep` kept); and the ensemble: per query,
min-max normalise BM25's top `keep` and dense → CE's top `keep`, sum 1:1 (a doc missing from
one run gets 0 there) and keep the top `keep`. The table is DPR top-k answer accuracy (a passage
among the top k contains an answer string) at k = 5 / 50 / 100. Writes DIR/report.md,
DIR/pipeline.png and DIR/metrics.json (plus nDCG@10 / RR@10 from the qrels), from process 0.
Corpus embeddings, BM25 indexes and cross-encoder scores come from the dualenc cache when there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dualenc import multihost
from dualenc.index.base import Run, top_k_run
from dualenc.index.bm25 import bm25_run
from dualenc.index.fusion import fuse
from dualenc.inference import corpus_cache, rerank
from dualenc.io import InputError, atomic_write, write_json
from dualenc.metrics import answer_accuracy, evaluate_run
from dualenc.retrieval import eval_config, evaluate

SYSTEMS = ("BM25", "dense", "dense → CE", "BM25 + dense → CE")
TABLE_KS = (5, 50, 100)


def pipeline_runs(bm25: Run, dense: Run, reranked: Run, keep: int) -> dict[str, Run]:
    """The four systems' runs, each cut to `keep` docs per query."""
    bm25_k, ce_k = top_k_run(bm25, keep), top_k_run(reranked, keep)
    ensemble = fuse(bm25_k, ce_k, "minmax", 1.0, depth=keep)
    return dict(zip(SYSTEMS, (bm25_k, top_k_run(dense, keep), ce_k, ensemble), strict=True))


def pipeline_table(
    runs: Mapping[str, Run],
    docs: Mapping[str, str],
    answers: Mapping[str, Sequence[str]],
    ks: Sequence[int] = TABLE_KS,
) -> dict[str, dict[str, float]]:
    """{system: {'Acc@k': top-k answer accuracy}} over every question in `answers`."""
    return {name: answer_accuracy(run, docs, answers, tuple(ks)) for name, run in runs.items()}


def render_markdown(table: Mapping[str, Mapping[str, float]], info: Mapping[str, Any]) -> str:
    """The report: setup lines, then one row per system (Top-k accuracy, percent)."""
    ks = [int(k.split("@")[1]) for k in next(iter(table.values())) if k.startswith("Acc@")]
    lines = [f"# Seed pipeline on {info.get('data_name', '?')} ({info.get('split', '?')})", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if k != "data_name"]
    lines += ["", "| system | " + " | ".join(f"Top-{k}" for k in ks) + " |"]
    lines.append("|---|" + "---:|" * len(ks))
    for name, row in table.items():
        cells = [f"{100 * row[f'Acc@{k}']:.1f}" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Top-k: % of questions with an answer string in the top k passages.", ""]
    lines += ["![pipeline](pipeline.png)", ""]
    return "\n".join(lines)


def pipeline_plot(table: Mapping[str, Mapping[str, float]], path) -> None:
    """Grouped bars: Top-k answer accuracy per system, one group per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(next(iter(table.values())))
    x, width = np.arange(len(keys)), 0.8 / max(len(table), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, row) in enumerate(table.items()):
        ax.bar(x + i * width, [100 * row[k] for k in keys], width, label=name)
    ax.set_xticks(x + width * (len(table) - 1) / 2, [k.replace("Acc@", "Top-") for k in keys])
    ax.set_ylabel("answer accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def _eval_cfg(data, dense_model, batch_size, max_length, cache, cache_dir, progress):
    cfg = eval_config.get_config()
    with cfg.unlocked():
        cfg.update(data=str(data), model=str(dense_model), batch_size=batch_size)
        cfg.update(max_length=max_length, cache=cache, cache_dir=cache_dir, progress=progress)
    return cfg


def run_pipeline(
    data,
    dense_model,
    rerank_model,
    output,
    *,
    split: str = "test",
    rerank_top: int = 500,
    keep: int = 100,
    ks: Sequence[int] = TABLE_KS,
    batch_size: int = 64,
    max_length: int = 0,
    cache: bool = True,
    cache_dir: str = "",
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, Run]]:
    """Builds the four runs, writes output/{report.md, pipeline.png, metrics.json}."""
    if rerank_top < keep or keep < max(ks):
        raise InputError(f"need rerank_top ≥ keep ≥ max(ks), got {rerank_top}, {keep}, {ks}")
    cfg = _eval_cfg(data, dense_model, batch_size, max_length, cache, cache_dir, progress)
    evaluate.check_config(cfg)
    t0 = time.time()
    doc_ids, texts, qids, queries, qrels = evaluate.split_texts(cfg, split)
    answers = evaluate.load_answers(Path(cfg.data), qids)
    if not answers:
        raise InputError("queries carry no metadata.answers (needed for answer accuracy)")
    docs, qmap = dict(zip(doc_ids, texts, strict=True)), dict(zip(qids, queries, strict=True))
    bm25, _ = evaluate.bm25_index(cfg, doc_ids, texts)
    first = bm25_run(bm25, qids, queries, doc_ids, keep)
    dense = evaluate.DenseRetriever(cfg, doc_ids, texts, "exact").run(qids, queries, rerank_top)
    rr = rerank.load_reranker(rerank_model)
    reranked = rerank.rerank_run(
        rr,
        dense,
        qmap,
        docs,
        top_k=rerank_top,
        batch_size=batch_size,
        progress=progress and multihost.is_main(),
        cache_dir=corpus_cache.resolve_cache_dir(cache, cache_dir),
    )
    runs = pipeline_runs(first, dense, reranked, keep)
    table = pipeline_table(runs, docs, answers, ks)
    info = {
        "data_name": Path(str(data)).name,
        "split": split,
        "queries": len(answers),
        "passages": len(doc_ids),
        "dense model": str(dense_model),
        "cross-encoder": f"{rerank_model} (max_length {rr.max_length})",
        "rerank": f"dense top-{rerank_top} → cross-encoder, top-{keep} kept",
        "ensemble": f"min-max per query, BM25 top-{keep} + dense → CE top-{keep}, 1:1",
        "seconds": round(time.time() - t0, 1),
    }
    if multihost.is_main():
        _write(output, table, runs, qrels, info)
    multihost.barrier("pipeline_report:written")
    return table, runs


def _write(output, table, runs, qrels, info) -> None:
    out = multihost.epath(output)
    ir = {n: evaluate_run(r, qrels, ("nDCG@10", "RR@10"))[0] for n, r in runs.items()}
    write_json(
        out / "metrics.json",
        {"systems": {n: {**table[n], **ir[n]} for n in table}, "info": info},
    )
    pipeline_plot(table, out / "pipeline.png")
    with atomic_write(out / "report.md") as f:
        f.write(render_markdown(table, info))
