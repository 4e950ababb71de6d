"""Evaluate a retriever on a BEIR-format dataset: encode -> index -> search -> rerank -> metrics
(the library behind `python -m dualenc.evaluate`, and the retrieval that cross-encoder eval reuses).

    python -m dualenc.evaluate --model M --data BEIR_DIR --split test --index exact --output DIR
    python -m dualenc.evaluate --config configs/eval/default.py --config.model=M ...

Writes DIR/metrics.json (ir-measures names: "nDCG@10", "R@100", "RR@10", ...; "Acc@k" DPR
answer accuracy when queries carry metadata.answers), DIR/run.trec, DIR/curve.json (R@k or
Acc@k for plots) and DIR/report.md, all atomically and from process 0 only. Hybrid = BM25 + w *
dense; w is tuned on --tune_split (never the evaluated split) when given.

Reranking: `--rerank_model CE --rerank_top 500 --final_top 5` retrieves max(k, 500) docs per
query, rescores the top 500 with the cross-encoder (sharded, bucketed, `inference.rerank`), keeps
the top k and then the top 5: metrics and run.trec describe that final cut. Cross-encoder scores
are cached with the corpus cache (by model hash, query and doc), so a rerun rescores nothing.
`--rerank_fusion_weight w` ranks the reranked docs by first stage + w * CE instead (per-query
`--fusion` normalisation), the rule whose w a cross-encoder's training picks on dev.

Long documents: `--chunk_size 200 --chunk_overlap 32` indexes overlapping token windows of each
document's text (each prefixed with its title; `inference.chunking`) instead of one truncated
vector per document, and scores a document by its best window (MaxP), exactly for the top k.

Dense retrieval goes through `engine`, the one train-time eval also uses; --model may be a
separate-tower export (MODEL/query + MODEL/passage). Run with several processes
(DUALENC_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID, or a TPU pod), encoding and exact
search shard over all devices of all hosts. Empty documents are evaluated (one warning).

Compressed embeddings: `--quantize int8|binary --rescore_multiplier 4` searches int8 codes or
sign bits and rescores the top 4k with the float32 query (`index.quantized`); `--truncate_dim
256` searches the first 256 dims (Matryoshka). metrics.json reports index_bytes (what is
searched), float32_bytes (the same vectors in float32) and rescore_bytes (a copy kept aside).

Corpus embeddings and BM25 indexes are cached by default (see `dualenc.inference.corpus_cache`: in
$XDG_CACHE_HOME/dualenc or --cache_dir), so `--index exact` then `--index scann` encodes the corpus
once; `--nocache` neither reads nor writes the cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from dualenc import multihost
from dualenc.data import corpus_source
from dualenc.data.beir import filter_qrels, load_qrels, load_queries, qrels_path
from dualenc.data.corpus_source import doc_text
from dualenc.index import save_index_dir
from dualenc.index.base import IndexManifest, Run, top_k_run
from dualenc.index.bm25 import BM25Index, bm25_run
from dualenc.index.fusion import fuse, fuse_head, tune_weight
from dualenc.index.quantized import check_options
from dualenc.inference import corpus_cache, rerank
from dualenc.io import InputError, read_jsonl, write_json
from dualenc.metrics import answer_accuracy, evaluate_run, recall_curve
from dualenc.models import target
from dualenc.retrieval import engine, report
from dualenc.retrieval.dense import DenseRetriever, corpus_path
from dualenc.runs import write_trec

log = logging.getLogger(__name__)
KINDS = ("exact", "scann", "bm25", "hybrid")
CURVE_KS = (1, 2, 5, 10, 20, 50, 100)


def load_answers(root: Path, qids) -> dict[str, list[str]]:
    """metadata.answers of each query in `qids` (NQ-style BEIR views); {} when none carry any."""
    path = next(
        (root / n for n in ("queries.jsonl", "queries.jsonl.gz") if (root / n).exists()), None
    )
    if path is None:
        return {}
    wanted, out = set(qids), {}
    for lineno, obj in read_jsonl(path):
        ans = (obj.get("metadata") or {}).get("answers")
        if obj.get("_id") in wanted and ans is not None:
            if not isinstance(ans, list) or not all(isinstance(a, str) for a in ans):
                raise InputError(
                    "answers must be a list of strings",
                    path=path,
                    line=lineno,
                    field="metadata.answers",
                )
            out[obj["_id"]] = ans
    return out


def split_texts(cfg, split: str, qrels_file: str = ""):
    """(doc_ids, doc_texts, qids, query_texts, qrels) for one split (judged queries only)."""
    return split_parts(engine.load_split(cfg.data, split, 0, qrels_file))


def split_parts(ds):
    """`split_texts`'s tuple of a loaded BeirDataset."""
    doc_ids, texts = engine.corpus_texts(ds)
    qids, queries = engine.judged_queries(ds)
    return doc_ids, texts, qids, queries, ds.qrels


def bm25_index(cfg, doc_ids, texts=None, source=None) -> tuple[BM25Index, bool]:
    """(BM25 index over `texts`, or streamed from `source` (a CorpusSource of the same rows)
    without holding the corpus, whether it came from the cache)."""
    m = IndexManifest(kind="bm25", count=len(doc_ids), corpus_path=str(corpus_path(cfg).resolve()))
    cache_dir = corpus_cache.resolve_cache_dir(cfg.cache, cfg.cache_dir)
    return corpus_cache.cached_bm25(
        None if source is not None else texts,
        doc_ids,
        m,
        cache_dir=cache_dir,
        write=multihost.is_main(),
        source=source,
    )


def _rerank(cfg, run: Run, queries: dict[str, str], docs: dict[str, str]) -> Run:
    reranker = rerank.load_reranker(cfg.rerank_model, dtype=cfg.get("dtype", "float32"))
    return rerank.rerank_run(
        reranker,
        run,
        queries,
        docs,
        top_k=cfg.rerank_top,
        batch_size=cfg.batch_size,
        progress=cfg.progress and multihost.is_main(),
        cache_dir=corpus_cache.resolve_cache_dir(cfg.cache, cfg.cache_dir),
    )


def first_stage_depth(cfg) -> int:
    """Docs per query the first stage returns: k, or rerank_top when reranking needs more."""
    return max(cfg.k, cfg.rerank_top) if cfg.rerank_model else cfg.k


def check_config(cfg) -> None:
    """Raises InputError naming the key of the first invalid setting in an eval config."""
    if cfg.index not in KINDS:
        raise InputError(f"unknown index {cfg.index!r}; choose one of {KINDS}", field="index")
    if not cfg.data:
        raise InputError("--data (a BEIR directory) is required", field="data")
    if not Path(cfg.data).is_dir():
        raise InputError("data directory not found", path=cfg.data)
    if cfg.get("corpus") and not Path(cfg.corpus).exists():
        raise InputError("corpus not found", path=cfg.corpus, field="corpus")
    if cfg.get("dtype", "float32") not in ("float32", "bfloat16"):
        raise InputError(f"unknown dtype {cfg.dtype!r}: float32 | bfloat16", field="dtype")
    if cfg.get("matmul_precision", "default") not in target.PRECISIONS:
        raise InputError(
            f"unknown matmul_precision {cfg.matmul_precision!r}: one of {target.PRECISIONS}",
            field="matmul_precision",
        )
    if cfg.tune_split and cfg.tune_split == cfg.split:
        raise InputError(
            f"refusing to tune the hybrid weight on the evaluated split {cfg.split!r}",
            field="tune_split",
        )
    if cfg.tune_split and cfg.index != "hybrid":
        raise InputError("--tune_split only applies to --index hybrid", field="tune_split")
    for key, low in (("k", 1), ("rerank_top", 1), ("final_top", 0), ("rerank_fusion_weight", 0)):
        if float(cfg[key]) < low:  # float: int() would pass a weight of -0.5
            raise InputError(f"must be ≥ {low}, got {cfg[key]}", field=key)
    if cfg.chunk_size < 0 or (cfg.chunk_size and not 0 <= cfg.chunk_overlap < cfg.chunk_size):
        raise InputError(
            f"need chunk_size ≥ 0 and, when chunking, 0 ≤ chunk_overlap < chunk_size; got "
            f"{cfg.chunk_size}, {cfg.chunk_overlap}",
            field="chunk_overlap" if cfg.chunk_size > 0 else "chunk_size",
        )
    if cfg.chunk_size and cfg.index not in ("exact", "scann", "hybrid"):
        raise InputError("chunking applies to dense search (exact, scann, hybrid)", field="index")
    args = (cfg.rescore_multiplier, cfg.rescore_with, cfg.truncate_dim, cfg.calibration_size)
    check_options(cfg.quantize or "int8", *args)  # quantize '' (float32) passes; the rest not
    for key in ("quantize", "truncate_dim"):
        if cfg[key] and cfg.index not in ("exact", "hybrid"):
            raise InputError(f"{key} applies to the exact dense index (exact, hybrid)", field=key)
    if cfg.rescore_with and not cfg.quantize:
        raise InputError("rescore_with needs quantize (int8 | binary)", field="rescore_with")


def retrieve(
    cfg, doc_ids, texts, qids, queries, info: dict[str, Any], source=None
) -> tuple[Run, Any, Sequence[str]]:
    """(run for `queries` with the configured system, the searched index, the ids of its rows:
    chunk ids, computed per item, when chunked). `source` (a `CorpusSource` of the same rows)
    lets dense search (chunked or not) and BM25 stream the corpus (`texts` may then be None);
    without it, chunks are cut from the 'title text' strings."""
    kind = cfg.index
    depth = first_stage_depth(cfg)
    if kind == "hybrid":
        depth = max(cfg.fusion_depth, depth)
    dense = bm25 = None
    if kind in ("exact", "scann", "hybrid"):
        sub = "exact" if kind == "hybrid" else kind
        dense = DenseRetriever(cfg, doc_ids, texts, sub, source)
        if dense.chunks is not None:
            info["chunking"] = dense.chunk_info
        info.update(
            encode_corpus_s=round(dense.encode_s, 2),
            cache_reused=dense.reused,
            index_build_s=round(dense.build_s, 2),
            model=str(dense.encoder.source),
        )
    if kind in ("bm25", "hybrid"):
        t = time.time()
        bm25, info["bm25_cache_reused"] = bm25_index(cfg, doc_ids, texts, source)
        info["bm25_build_s"] = round(time.time() - t, 2)
    t = time.time()
    if kind == "bm25":
        run = bm25_run(bm25, qids, queries, doc_ids, depth)
    elif kind != "hybrid":
        run = dense.run(qids, queries, depth)
    else:
        weight = cfg.hybrid_weight
        if cfg.tune_split:
            t_qids, t_queries, t_qrels = judged_split(cfg.data, cfg.tune_split, doc_ids)
            weight, grid = tune_weight(
                bm25_run(bm25, t_qids, t_queries, doc_ids, depth),
                dense.run(t_qids, t_queries, depth),
                t_qrels,
                cfg.tune_metric,
                tuple(cfg.tune_grid),
                cfg.fusion,
            )
            info.update(
                tune_split=cfg.tune_split,
                tune_queries=len(t_qids),
                tune_scores={str(w): round(v, 4) for w, v in grid.items()},
            )
        info.update(hybrid_weight=weight, fusion=cfg.fusion)
        run = fuse(
            bm25_run(bm25, qids, queries, doc_ids, depth),
            dense.run(qids, queries, depth),
            cfg.fusion,
            weight,
        )
    info["search_s"] = round(time.time() - t, 2)
    if dense is not None and kind != "hybrid":
        return run, dense.index, dense.ids
    return run, bm25, list(doc_ids)


def load_streamed(cfg):
    """(corpus source, doc ids, judged qids, their texts, qrels) of cfg's split, the corpus
    validated in one streaming pass and never held: only its ids (rows -> ids) are kept."""
    source = corpus_source.open_corpus(corpus_path(cfg), allow_empty=True)
    doc_ids = corpus_source.read_ids(source)
    qids, queries, qrels = judged_split(cfg.data, cfg.split, doc_ids, cfg.qrels_file)
    return source, doc_ids, qids, queries, qrels


def judged_split(data, split: str, doc_ids, qrels_file: str = ""):
    """(judged qids sorted, their texts, qrels) of one split of BEIR dir `data` whose corpus
    has `doc_ids`, read without the corpus's texts; `qrels_file` replaces the split's qrels."""
    root = Path(data)
    qfile = next(
        (root / n for n in ("queries.jsonl", "queries.jsonl.gz") if (root / n).exists()), None
    )
    if qfile is None:
        raise InputError("missing file (looked for queries.jsonl, queries.jsonl.gz)", path=root)
    queries = load_queries(qfile)
    qpath = Path(qrels_file) if qrels_file else qrels_path(root, split)
    qrels = filter_qrels(load_qrels(qpath), queries, set(doc_ids), source=str(qpath))
    if not qrels:
        raise InputError(f"no judged queries for split {split!r}", path=root)
    qids = sorted(q for q in qrels if q in queries)
    return qids, [queries[q] for q in qids], qrels


def run_docs(source, doc_ids, texts, run: Run) -> dict[str, str]:
    """{doc id: 'title text'} of the docs in `run` (all of them when `texts` is in memory),
    read from the source in row order (one forward pass, gzip included)."""
    if texts is not None:
        return dict(zip(doc_ids, texts, strict=True))
    wanted = {d for ranked in run.values() for d in ranked}
    out = {}
    for row in (i for i, d in enumerate(doc_ids) if d in wanted):
        ids, docs = source.read(row, row + 1)
        out[ids[0]] = doc_text(docs[0])
    return out


def run_evaluation(cfg: ml_collections.ConfigDict) -> dict[str, float]:
    """Runs the evaluation described by `cfg`, writes cfg.output/*, returns the metrics."""
    check_config(cfg)
    target.set_precision(cfg.get("matmul_precision", "default"))
    t0 = time.time()
    source, doc_ids, qids, queries, qrels = load_streamed(cfg)
    answers = load_answers(Path(cfg.data), qids)
    # The corpus is never read whole: dense search (chunks included) and BM25 stream `source`,
    # reranking and answer accuracy read only the retrieved docs (`run_docs`).
    texts = None
    info: dict[str, Any] = {
        "system": cfg.index,
        "data": str(cfg.data),
        "split": cfg.split,
        "num_docs": len(doc_ids),
        "num_queries": len(qids),
    }
    run, index, index_ids = retrieve(cfg, doc_ids, texts, qids, queries, info, source)
    if cfg.rerank_model:
        docs = run_docs(source, doc_ids, texts, run)
        reranked = _rerank(cfg, run, dict(zip(qids, queries, strict=True)), docs)
        info.update(rerank_model=cfg.rerank_model, rerank_top=cfg.rerank_top)
        if cfg.rerank_fusion_weight > 0:  # e.g. the weight a cross-encoder's training chose on dev
            reranked = fuse_head(
                run, reranked, cfg.rerank_top, cfg.fusion, cfg.rerank_fusion_weight
            )
            info.update(rerank_fusion_weight=cfg.rerank_fusion_weight, fusion=cfg.fusion)
        run = reranked
    run = top_k_run(run, cfg.k)
    if cfg.final_top:
        run = top_k_run(run, cfg.final_top)
        info["final_top"] = cfg.final_top
    metrics, _ = evaluate_run(run, qrels, tuple(cfg.measures))
    curve = {f"R@{k}": v for k, v in recall_curve(run, qrels, CURVE_KS).items()}
    if answers:
        docs = run_docs(source, doc_ids, texts, run)
        metrics.update(answer_accuracy(run, docs, answers, tuple(cfg.answer_ks)))
        curve.update(answer_accuracy(run, docs, answers, CURVE_KS))
    metrics["num_queries"] = len(qids)
    if hasattr(index, "memory"):  # dense indexes: bytes searched, and their float32 size
        metrics.update(index.memory())
        info["index"] = {"kind": index.manifest.kind, **index.manifest.params}
    info["total_s"] = round(time.time() - t0, 2)
    if cfg.output and multihost.is_main():
        out = multihost.epath(cfg.output)
        write_json(out / "metrics.json", metrics)
        write_json(out / "curve.json", curve)
        write_json(out / "info.json", {**info, "config": cfg.to_dict()})
        write_trec(out / "run.trec", run, tag=cfg.tag or f"dualenc-{cfg.index}")
        report.write_single_report(out / "report.md", metrics, info)
    if cfg.save_index and multihost.is_main():
        save_index_dir(index, index_ids, cfg.save_index)  # chunk ids when chunked
    multihost.barrier("evaluate:written")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics


def default_config() -> ml_collections.ConfigDict:
    """The package's default eval config (retrieval/eval_config.py; works from a wheel)."""
    from dualenc.retrieval import eval_config

    return eval_config.get_config()
