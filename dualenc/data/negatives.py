"""Hard negatives as training data: mined in a trainer's run, or mined into a training file.

The trainers' BEIR path (`config_negatives`, `data.mine_negatives`) uses `bm25_negatives` (top hits
minus the judged positives) or, for 'dense' / 'both', `beir_negatives`: the general miner of
`data.mining` over the BEIR split. `run_mining` builds the retrievers a `MineConfig` needs
(BM25, a dense model, a cross-encoder re-scoring) and mines; `load_data`, `to_records` and
`write_output` read training files and write DPR JSON or sentence-transformers JSONL (with
scores): the library of `python -m dualenc.mine`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from absl import logging

from dualenc import multihost
from dualenc.data import mining
from dualenc.data.beir import load_beir
from dualenc.data.examples import TrainExample, passage_text
from dualenc.data.mining import MineConfig, MiningData
from dualenc.data.records import load_examples
from dualenc.data.st_format import examples_from_beir
from dualenc.index.bm25 import BM25Index
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


def load_data(path, format: str = "auto", split: str = "train") -> MiningData:
    """The queries and candidate pool of a training file or BEIR dir."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "beir":
        return mining.data_from_beir(path, split)
    return mining.data_from_examples(load_examples(path, fmt, split=split))


def _encode(data: MiningData, model: str, *, batch_size: int, max_length, progress):
    """(query embeddings, the pool's EmbeddingShards): the pool is streamed into memory-mapped
    shards in the corpus cache (`inference.shards`; a rerun or a killed run reuses them), each
    host encoding its own; queries are encoded on this host's devices."""
    from dualenc.data.corpus_source import from_texts
    from dualenc.inference import corpus_cache, corpus_encode, shards
    from dualenc.inference.encode import encode_texts, warn_empty
    from dualenc.models.loading import load_towers

    q_enc, p_enc = load_towers(model)
    warn_empty(data.texts, "pool passages")
    kw = dict(batch_size=batch_size, max_length=max_length, progress=progress)
    q_emb = encode_texts(q_enc, [q.text for q in data.queries], mesh=shards.local_mesh(), **kw)
    pool, _ = corpus_encode.cached_shards(
        p_enc,
        from_texts(data.texts, data.ids),
        cache_dir=corpus_cache.resolve_cache_dir(),
        max_length=int(max_length or p_enc.max_length),
        text_fn=lambda d: d.text,
        batch_size=batch_size,
        progress=progress,
    )
    return q_emb, pool


def ce_score_fn(data: MiningData, reranker, *, batch_size: int = 32, progress=True):
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
    data: MiningData,
    cfg: MineConfig,
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
    cfg = MineConfig(
        method=method,
        num_negatives=depth,
        range_min=skip,
        range_max=skip + depth,
        max_relative_score=max_relative_score,
    )
    mined, summary = run_mining(data, cfg, model=model, progress=False)
    logging.info("mined %s negatives from %s:\n%s", method, source, format_summary(summary))
    return {m.query.qid: [data.ids[r] for r in m.neg_rows] for m in mined}


def mine_to_file(
    data_path,
    output,
    cfg: MineConfig,
    *,
    format: str = "auto",
    split: str = "train",
    output_format: str = "auto",
    **run_kwargs,
) -> tuple[str, dict]:
    """Mines a training file or BEIR dir into `output` (`run_mining` with `run_kwargs`); returns
    (the output format written, the summary of what each filter dropped)."""
    cfg.check()
    out_fmt = output_format_for(output, output_format)
    data = load_data(data_path, format, split)
    mined, summary = run_mining(data, cfg, **run_kwargs)
    write_output(output, to_records(data, mined, out_fmt), out_fmt)
    return out_fmt, summary


def _ctx(data: MiningData, row: int, score: float) -> dict:
    title, body = data.titles[row], data.bodies[row]
    if not (title.strip() and body.strip()):  # the DPR reader needs a non-empty text
        title, body = "", data.texts[row]
    return {"title": title, "text": body, "score": score, "passage_id": str(row)}


def to_records(data: MiningData, mined, output_format: str) -> list[dict]:
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


# --------------------------------------------------------------------------- in-run mining


def bm25_negatives(ds, depth: int, skip: int = 0) -> dict[str, list[str]]:
    """{query id: up to `depth` BM25-ranked doc ids, after `skip`, never a judged positive}.

    Documents with no title and no text are never retrieved (they share no term) and are counted
    in one warning.
    """
    doc_ids = list(ds.corpus)
    texts = [passage_text(ds.corpus[d].title, ds.corpus[d].text) for d in doc_ids]
    empty = sum(not t.strip() for t in texts)
    if empty:
        logging.warning("mining: %d of %d documents are empty (never negatives)", empty, len(texts))
    index = BM25Index.build_streamed(texts)  # bit-identical to build, tokens never all held
    qids = [q for q in ds.qrels if q in ds.queries]
    _, rows = index.search_texts([ds.queries[q] for q in qids], depth + skip + 10)
    out = {}
    for q, r in zip(qids, rows, strict=True):
        judged = ds.qrels[q]
        cand = [doc_ids[i] for i in r if i >= 0 and judged.get(doc_ids[i], 0) <= 0]
        out[q] = cand[skip : skip + depth]
    return out


def config_negatives(ds, d) -> dict[str, list[str]] | None:
    """The trainers' in-run mining of BEIR training split `ds` per `data.mine_*` (config `d`);
    None when off. 'dense' / 'both' run the general miner with `data.mine_model`, so a reranker can
    train on the candidates it will rerank (a hybrid first stage: 'both')."""
    if d.mine_negatives == "bm25":
        return bm25_negatives(ds, int(d.mine_depth), int(d.mine_skip))
    if d.mine_negatives in ("dense", "both"):
        return beir_negatives(
            ds,
            source=f"{d.train.path}:{d.train.split}",
            method=d.mine_negatives,
            depth=int(d.mine_depth),
            skip=int(d.mine_skip),
            model=str(d.mine_model),
            max_relative_score=float(d.get("mine_max_relative_score", 0.0)) or None,
        )
    return None


def config_examples(d) -> list[TrainExample]:
    """TrainExamples of BEIR training data `d.train` with `config_negatives`."""
    ds = load_beir(d.train.path, d.train.split)
    return examples_from_beir(ds, config_negatives(ds, d))
