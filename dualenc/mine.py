"""Mines hard negatives for (query, positive) training data.

Usage:
  python -m dualenc.mine --data train.json --method bm25 --output mined.jsonl
  python -m dualenc.mine --data BEIR_DIR --split train --method both --model MODEL_DIR
      --max_relative_score 0.95 --cross_encoder CE_DIR --output mined.json   (one line)

Candidates come from the pool of every passage in the data (the corpus for a BEIR dir): BM25,
exact dense search with `--model` (sharded over all devices), or `both` (the two windowed
rankings interleaved, dense first, repeats dropped; margins and scores then use the dense
model). A query's positives (all judged-relevant docs for BEIR) are never negatives; nor are
empty passages or, for QA data with `answers`, passages containing an answer (whole word, any case).
`--cross_encoder` re-scores the positives and candidates: its scores then drive the margin
filters and are the ones written. Output: DPR JSON (`.json`) or sentence-transformers JSONL
(`.jsonl`, one line per query: positives, negatives and "scores", positives first, the format the
training pipeline reads as teacher scores). Queries left without a negative are not written.
A summary of what each filter dropped is printed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from absl import flags, logging

from dualenc import multihost
from dualenc.data import mining
from dualenc.data.store import load_examples
from dualenc.io import InputError, atomic_write, open_text

FORMATS = ("auto", "dpr", "st_jsonl", "st_tsv", "beir")
OUTPUT_FORMATS = ("auto", "dpr", "st_jsonl")


def detect_format(path: str | os.PathLike) -> str:
    """dir → beir, .tsv → st_tsv, .json → dpr, .jsonl → dpr if its first record has `question`."""
    p = Path(path)
    if p.is_dir():
        return "beir"
    if not p.exists():
        raise InputError("training data not found", path=path)
    name = p.name.removesuffix(".gz")
    if name.endswith(".tsv"):
        return "st_tsv"
    if name.endswith(".json"):
        return "dpr"
    with open_text(p) as f:
        first = next((line for line in f if line.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return "st_jsonl"  # its reader names the bad line
    return "dpr" if isinstance(obj, dict) and "question" in obj else "st_jsonl"


def load_data(path, format: str = "auto", split: str = "train") -> mining.MiningData:
    """The queries and candidate pool of a training file or BEIR dir."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "beir":
        return mining.data_from_beir(path, split)
    return mining.data_from_examples(load_examples(path, fmt, split=split))


def _encode(data: mining.MiningData, model: str, *, batch_size: int, max_length, progress):
    from dualenc.inference.encode import encode_texts, warn_empty
    from dualenc.models.loading import load_towers

    q_enc, p_enc = load_towers(model)
    warn_empty(data.texts, "pool passages")
    kw = dict(batch_size=batch_size, max_length=max_length, progress=progress)
    q_emb = encode_texts(q_enc, [q.text for q in data.queries], **kw)
    return q_emb, encode_texts(p_enc, data.texts, **kw)


def ce_score_fn(data: mining.MiningData, reranker, *, batch_size: int = 32, progress=True):
    """score_fn for `mining.mine` from a cross-encoder (one batched pass over all pairs)."""
    from dualenc.inference import rerank

    def score(q_idx, rows):
        if not any(len(r) for r in rows):
            return [np.zeros(0, np.float32) for _ in rows]
        qs = [data.queries[i].text for i, r in zip(q_idx, rows, strict=True) for _ in r]
        ps = [data.texts[x] for r in rows for x in r]
        flat = rerank.relevance(
            rerank.score_pairs(reranker, qs, ps, batch_size=batch_size, progress=progress)
        )
        return np.split(flat, np.cumsum([len(r) for r in rows])[:-1])

    return score


def run_mining(
    data: mining.MiningData,
    cfg: mining.MineConfig,
    *,
    model=None,
    cross_encoder=None,
    similarity="cos",
    batch_size=64,
    max_length=None,
    progress=True,
):
    """Builds the retrievers `cfg.method` needs, mines; returns (mined, summary)."""
    cfg.check()
    if cfg.method in ("dense", "both") and not model:
        raise InputError(f"--method {cfg.method} needs --model", field="model")
    bm25 = dense = None
    if cfg.method in ("bm25", "both"):
        bm25 = mining.BM25Scorer(data.texts)
    if cfg.method in ("dense", "both"):
        q_emb, p_emb = _encode(
            data, model, batch_size=batch_size, max_length=max_length, progress=progress
        )
        dense = mining.DenseScorer(q_emb, p_emb, similarity)
    cand = mining.candidate_rows(data, cfg, bm25=bm25, dense=dense)
    if cross_encoder:
        from dualenc.inference import rerank

        score_fn = ce_score_fn(data, rerank.load_reranker(cross_encoder), progress=False)
    elif dense is not None:
        score_fn = dense.score
    else:

        def score_fn(q_idx, rows):
            return bm25.score([data.queries[i].text for i in q_idx], rows)

    return mining.mine(data, cfg, score_fn, cand, progress=progress)


def beir_negatives(
    ds,
    *,
    source: str,
    method: str,
    depth: int,
    skip: int = 0,
    model: str | None = None,
    max_relative_score: float | None = None,
) -> dict[str, list[str]]:
    """{query id: up to `depth` mined doc ids} of a loaded BEIR split `ds` (`source` names it):
    what the trainers' in-run mining (`data.mine_negatives='dense'|'both'`) samples from. Ranks
    [skip, skip + depth) of each retriever, interleaved for `both`; margins scored by the dense
    model. Takes the trainer's dataset so the corpus is read once."""
    data = mining.data_from_dataset(ds, source)
    cfg = mining.MineConfig(
        method=method,
        num_negatives=depth,
        range_min=skip,
        range_max=skip + depth,
        max_relative_score=max_relative_score,
    )
    mined, summary = run_mining(data, cfg, model=model, progress=False)
    logging.info("mined %s negatives from %s:\n%s", method, source, format_summary(summary))
    return {m.query.qid: [data.ids[r] for r in m.neg_rows] for m in mined}


def _ctx(data: mining.MiningData, row: int, score: float) -> dict:
    title, body = data.titles[row], data.bodies[row]
    if not (title.strip() and body.strip()):  # the DPR reader needs a non-empty text
        title, body = "", data.texts[row]
    return {"title": title, "text": body, "score": score, "passage_id": str(row)}


def to_records(data: mining.MiningData, mined, output_format: str) -> list[dict]:
    """DPR records or sentence-transformers JSONL records (scores: positives, then negatives)."""
    out = []
    for m in mined:
        q = m.query
        if output_format == "dpr":
            out.append(
                {
                    "qid": q.qid,
                    "question": q.text,
                    "answers": q.answers,
                    "positive_ctxs": [
                        _ctx(data, r, s) for r, s in zip(q.pos_rows, m.pos_scores, strict=True)
                    ],
                    "hard_negative_ctxs": [
                        _ctx(data, r, s) for r, s in zip(m.neg_rows, m.neg_scores, strict=True)
                    ],
                }
            )
        else:
            out.append(
                {
                    "qid": q.qid,
                    "query": q.text,
                    "positive": [data.texts[r] for r in q.pos_rows],
                    "negative": [data.texts[r] for r in m.neg_rows],
                    "scores": [*m.pos_scores, *m.neg_scores],
                }
            )
    return out


def write_output(path, records: list[dict], output_format: str) -> None:
    """Process 0 writes atomically: a JSON list (DPR) or one JSON object per line."""
    if multihost.is_main():
        with atomic_write(path) as f:
            if output_format == "dpr":
                json.dump(records, f, indent=1)
                f.write("\n")
            else:
                for r in records:
                    f.write(json.dumps(r) + "\n")
    multihost.barrier("mine:written")


def output_format_for(path, output_format: str) -> str:
    if output_format != "auto":
        return output_format
    name = Path(path).name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "st_jsonl"
    if name.endswith(".json"):
        return "dpr"
    raise InputError("cannot tell the format from the name (.json or .jsonl)", field="output")


def format_summary(summary: dict) -> str:
    return "\n".join(f"  {k:<28} {v}" for k, v in summary.items())


def _define_flags() -> None:
    flags.DEFINE_string(
        "data", None, "Training data: DPR JSON/JSONL, ST JSONL/TSV or a BEIR dir.", required=True
    )
    flags.DEFINE_enum("format", "auto", FORMATS, "Format of --data (auto: by name / content).")
    flags.DEFINE_string("split", "train", "BEIR qrels split whose queries are mined.")
    flags.DEFINE_enum("method", "bm25", mining.METHODS, "Candidate retriever.")
    flags.DEFINE_string("model", None, "Dense model dir (needed by --method dense|both).")
    flags.DEFINE_enum("similarity", "cos", ["cos", "dot"], "Dense score: cosine or inner product.")
    flags.DEFINE_string("output", None, "Output file: .json (DPR) or .jsonl (ST).", required=True)
    flags.DEFINE_enum("output_format", "auto", OUTPUT_FORMATS, "Output format (auto: by name).")
    flags.DEFINE_integer("num_negatives", 5, "Negatives kept per query.")
    flags.DEFINE_integer("range_min", 0, "Skip the retriever's ranks below this (0-based).")
    flags.DEFINE_integer("range_max", 50, "Consider ranks below this only.")
    flags.DEFINE_float("absolute_margin", None, "Drop a candidate scoring > positive − margin.")
    flags.DEFINE_float(
        "max_relative_score",
        None,
        "Drop a candidate scoring ≥ this × the positive's score (0.95: the NV-Retriever rule; "
        "a relative margin r is 1 − r).",
    )
    flags.DEFINE_float("max_score", None, "Drop a candidate scoring above this.")
    flags.DEFINE_enum("sampling", "top", mining.SAMPLING, "Keep the best or a random subset.")
    flags.DEFINE_integer("seed", 0, "Seed of --sampling random.")
    flags.DEFINE_bool("answer_filter", True, "Drop candidates containing a DPR answer string.")
    flags.DEFINE_string("cross_encoder", None, "Cross-encoder dir re-scoring the candidates.")
    flags.DEFINE_integer("batch_size", 64, "Encoding batch size.", lower_bound=1)
    flags.DEFINE_integer("max_length", None, "Truncate passages to this many tokens.")
    flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv) -> None:
    del argv
    fv = flags.FLAGS
    multihost.initialize()
    cfg = mining.MineConfig(
        method=fv.method,
        num_negatives=fv.num_negatives,
        range_min=fv.range_min,
        range_max=fv.range_max,
        absolute_margin=fv.absolute_margin,
        max_relative_score=fv.max_relative_score,
        max_score=fv.max_score,
        sampling=fv.sampling,
        seed=fv.seed,
        answer_filter=fv.answer_filter,
    )
    try:
        cfg.check()
        out_fmt = output_format_for(fv.output, fv.output_format)
        data = load_data(fv.data, fv.format, fv.split)
        mined, summary = run_mining(
            data,
            cfg,
            model=fv.model,
            cross_encoder=fv.cross_encoder,
            similarity=fv.similarity,
            batch_size=fv.batch_size,
            max_length=fv.max_length,
            progress=fv.progress,
        )
        write_output(fv.output, to_records(data, mined, out_fmt), out_fmt)
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if multihost.is_main():
        print(f"mined {fv.output} ({out_fmt}):\n{format_summary(summary)}")
    logging.info("wrote %s", fv.output)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
