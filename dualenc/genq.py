"""GenQ: synthetic queries for a corpus from a T5 query generator, as training data.

python -m dualenc.genq --model BeIR/query-gen-msmarco-t5-base-v1 --data DIR/scifact \
    --output DIR/scifact-genq [--queries_per_doc 3 --top_p 0.95 --top_k 25 --max_query_length 64]

Each document (title + " " + text, as BEIR's generator reads it) gets `queries_per_doc` sampled
queries (nucleus + top-k sampling, as BEIR's `QueryGenerator`; `--greedy` for one deterministic
query). The output is a BEIR dir: corpus.jsonl (the documents used), queries.jsonl (ids
`genQ1`, ...), qrels/train.tsv (each query → its document): train a bi-encoder on it with
`--config.data.train.format=beir --config.data.train.path=OUT` (with `data.mine_negatives` for
hard negatives: GenQ + MNRL is BEIR's and GPL's recipe). Exact duplicates of a document's query and
empty ones are dropped, and so are empty documents; the counts are printed. Files are written to
temporaries and renamed; on a pod only process 0 writes.

Generation is jitted with a fixed-size key/value cache (`models/t5.py`): greedy decoding equals
transformers' `generate` token for token (tests/genq_test.py).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from dualenc import cli, multihost, tokenization
from dualenc.data.beir import load_corpus
from dualenc.io import InputError, atomic_write
from dualenc.models import convert, t5
from dualenc.models.loading import read_json, read_state_dict, resolve_model_dir

# ----------------------------------------------------------------------------- model


class Generator:
    """A T5 query generator: config, params (on device), tokenizer."""

    def __init__(self, name_or_path: str):
        root = resolve_model_dir(name_or_path)
        hf = read_json(root / "config.json", what="config.json")
        if hf.get("model_type") != "t5":
            raise InputError(
                f"expected a T5 query generator (model_type 't5'), got {hf.get('model_type')!r}",
                path=root / "config.json",
            )
        self.config = t5.T5Config.from_hf(hf)
        sd = read_state_dict(root)
        untied = "lm_head.weight" in sd and hf.get("tie_word_embeddings", True) is False
        self.config = t5.T5Config.from_hf({**hf, "tie_word_embeddings": not untied})
        ignore = [r"embed_tokens\.weight$", r"relative_attention_bias\.weight$"]
        ignore += [] if untied else [r"^lm_head\.weight$"]
        shapes = t5.param_shapes(self.config, untied_head=untied)
        self.params = jax.tree.map(
            jnp.asarray,
            convert.params_from_state_dict(sd, shapes, prefix="", ignore_unexpected=ignore),
        )
        self.tokenizer = tokenization.load_tokenizer(root)
        self.source = str(name_or_path)


# ----------------------------------------------------------------------------- generation


def _warp(logits, temperature: float, top_k: int, top_p: float):
    """transformers' sampling warpers in its order: temperature, top-k, top-p (nucleus)."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the better tokens
        drop_sorted = before >= top_p  # the best token is always kept
        drop = (
            jnp.zeros_like(drop_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(drop_sorted)
        )
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


def top_k_candidates(logits, temp: float, top_k: int, top_p: float):
    """(logits, ids) of the k best tokens, top-p applied among them (-inf = dropped): the same
    distribution as `_warp` over the whole vocabulary, without sorting it (a full sort per step
    made sampling ~4x slower on CPU, benchmarks/genq.py)."""
    vals, idx = jax.lax.top_k(logits / temp, top_k)
    return _warp(vals, 1.0, 0, top_p), idx


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "max_new_tokens", "num_return", "sample", "top_k", "top_p", "temp"),
)
def generate(
    params,
    input_ids,
    attention_mask,
    rng,
    *,
    cfg: t5.T5Config,
    max_new_tokens: int,
    num_return: int = 1,
    sample: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    temp: float = 1.0,
):
    """(B, L) inputs → (B * num_return, max_new_tokens) ids (rows of one input adjacent); after
    its end-of-sequence token a row holds padding; stops when every row has ended."""
    enc = t5.encode(params, cfg, input_ids, attention_mask)
    enc = jnp.repeat(enc, num_return, axis=0)
    mask = jnp.repeat(attention_mask, num_return, axis=0)
    cross = t5.cross_kv(params, cfg, enc)
    n = enc.shape[0]
    pad, eos = cfg.pad_token_id, cfg.eos_token_id

    def body(state):
        t, prev, cache, out, done, key = state
        logits, cache = t5.decode(params, cfg, prev[:, None], t, cache, cross, mask)
        logits = logits[:, 0]
        key, sub = jax.random.split(key)
        if sample and 0 < top_k < logits.shape[-1]:
            vals, idx = top_k_candidates(logits, temp, top_k, top_p)
            pick = jax.random.categorical(sub, vals, axis=-1)
            nxt = jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
        elif sample:
            nxt = jax.random.categorical(sub, _warp(logits, temp, top_k, top_p), axis=-1)
        else:
            nxt = jnp.argmax(logits, axis=-1)
        nxt = jnp.where(done, pad, nxt.astype(jnp.int32))
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, t))
        return t + 1, nxt, cache, out, done | (nxt == eos), key

    def cond(state):
        t, _, _, _, done, _ = state
        return (t < max_new_tokens) & ~jnp.all(done)

    state = (
        jnp.int32(0),
        jnp.full((n,), cfg.decoder_start_token_id, jnp.int32),
        t5.empty_cache(cfg, n, max_new_tokens),
        jnp.full((n, max_new_tokens), pad, jnp.int32),
        jnp.zeros((n,), bool),
        rng,
    )
    return jax.lax.while_loop(cond, body, state)[3]


def decode_texts(tokenizer, rows: np.ndarray, cfg: t5.T5Config) -> list[str]:
    """Generated ids → strings (cut at end-of-sequence, special tokens skipped)."""
    out = []
    for row in rows.tolist():
        if cfg.eos_token_id in row:
            row = row[: row.index(cfg.eos_token_id)]
        out.append(tokenizer.decode([t for t in row if t != cfg.pad_token_id]).strip())
    return out


def generate_queries(
    gen: Generator,
    texts,
    *,
    num,
    max_doc_length,
    max_query_length,
    batch_size,
    greedy,
    top_k,
    top_p,
    seed,
    progress=True,
) -> list[list[str]]:
    """`num` queries per text (a list per text, in order)."""
    seqs = tokenization.tokenize(gen.tokenizer, texts, max_doc_length)
    pad = gen.config.pad_token_id
    key = jax.random.key(seed)
    out: list[list[str]] = []
    t0 = time.perf_counter()
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        rows = len(chunk)
        length = tokenization.bucket_length(max(len(s) for s in chunk), max_length=max_doc_length)
        ids, mask = tokenization.pad_batch(chunk + [[pad]] * (batch_size - rows), length, pad)
        key, sub = jax.random.split(key)
        got = generate(
            gen.params,
            jnp.asarray(ids),
            jnp.asarray(mask),
            sub,
            cfg=gen.config,
            max_new_tokens=max_query_length,
            num_return=1 if greedy else num,
            sample=not greedy,
            top_k=top_k,
            top_p=top_p,
        )
        texts_out = decode_texts(gen.tokenizer, np.asarray(got), gen.config)
        per = 1 if greedy else num
        out.extend(texts_out[i * per : (i + 1) * per] for i in range(rows))
        if progress:
            done = start + rows
            logging.info(
                "genq: %d / %d docs (%.1f docs/s)",
                done,
                len(seqs),
                done / (time.perf_counter() - t0),
            )
    return out


# ----------------------------------------------------------------------------- command line


def corpus_path(data: str) -> Path:
    p = Path(data)
    if p.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (p / name).exists():
                return p / name
        raise InputError("no corpus.jsonl[.gz] in this directory", path=p)
    if not p.exists():
        raise InputError("no such corpus file or BEIR directory", path=p)
    return p


def write_beir(out: Path, corpus: dict, queries: list[list[str]], prefix: str) -> dict:
    """The BEIR dir of the generated queries; returns counts. Temporaries, then renames."""
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    n, dropped, rows_q, rows_r = 0, 0, [], ["query-id\tcorpus-id\tscore"]
    for doc_id, qs in zip(corpus, queries, strict=True):
        seen = set()
        for q in qs:
            if not q or q in seen:
                dropped += 1
                continue
            seen.add(q)
            n += 1
            rows_q.append(json.dumps({"_id": f"{prefix}{n}", "text": q}, ensure_ascii=False))
            rows_r.append(f"{prefix}{n}\t{doc_id}\t1")
    docs = [
        json.dumps({"_id": i, "title": d.title, "text": d.text}, ensure_ascii=False)
        for i, d in corpus.items()
    ]
    for path, rows in (
        (out / "corpus.jsonl", docs),
        (out / "queries.jsonl", rows_q),
        (out / "qrels" / "train.tsv", rows_r),
    ):
        with atomic_write(path) as f:
            f.write("\n".join(rows) + "\n")
    return {"docs": len(corpus), "queries": n, "dropped_empty_or_duplicate": dropped}


def _define_flags() -> None:
    flags.DEFINE_string(
        "model", None, "T5 query generator: a local dir or a hub id.", required=True
    )
    flags.DEFINE_string(
        "data", None, "BEIR dir (its corpus.jsonl[.gz]) or a corpus .jsonl[.gz].", required=True
    )
    flags.DEFINE_string(
        "output", None, "Output BEIR dir: corpus.jsonl, queries.jsonl, qrels/.", required=True
    )
    flags.DEFINE_integer("queries_per_doc", 3, "Sampled queries per document (BEIR: 3).")
    flags.DEFINE_integer("max_doc_length", 384, "Document tokens the generator reads.")
    flags.DEFINE_integer("max_query_length", 64, "Most tokens per generated query.")
    flags.DEFINE_integer("batch_size", 32, "Documents per generation batch.")
    flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass.")
    flags.DEFINE_integer("top_k", 25, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_bool("greedy", False, "One greedy (deterministic) query per document.")
    flags.DEFINE_integer("limit", 0, "Only the first N documents (0: all).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("prefix", "genQ", "Query id prefix.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    for name in ("queries_per_doc", "max_doc_length", "max_query_length", "batch_size"):
        if getattr(FLAGS, name) <= 0:
            cli.fail(f"error: --{name} must be > 0, got {getattr(FLAGS, name)}")
    if not 0.0 < FLAGS.top_p <= 1.0 or FLAGS.top_k < 0:
        cli.fail(
            f"error: --top_p must be in (0, 1] and --top_k >= 0 (got {FLAGS.top_p}, {FLAGS.top_k})"
        )
    try:
        corpus = load_corpus(corpus_path(FLAGS.data), allow_empty=True)
        gen = Generator(FLAGS.model)
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        cli.fail(f"error: {e}")
    if FLAGS.limit:
        corpus = dict(list(corpus.items())[: FLAGS.limit])
    kept = {i: d for i, d in corpus.items() if d.title.strip() or d.text.strip()}
    skipped, corpus = len(corpus) - len(kept), kept  # nothing to ask about an empty document
    if not corpus:
        cli.fail(f"error: {FLAGS.data}: every document is empty")
    texts = [f"{d.title} {d.text}".strip() for d in corpus.values()]
    t0 = time.perf_counter()
    queries = generate_queries(
        gen,
        texts,
        num=FLAGS.queries_per_doc,
        max_doc_length=FLAGS.max_doc_length,
        max_query_length=FLAGS.max_query_length,
        batch_size=FLAGS.batch_size,
        greedy=FLAGS.greedy,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        seed=FLAGS.seed,
    )
    secs = time.perf_counter() - t0
    counts = multihost.write_on_main(
        write_beir, Path(FLAGS.output), corpus, queries, FLAGS.prefix, barrier_name="genq"
    )
    if counts is not None:
        counts["skipped_empty_docs"] = skipped
        counts["seconds"] = round(secs, 1)
        print(json.dumps(counts), flush=True)
        print(f"wrote {FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
