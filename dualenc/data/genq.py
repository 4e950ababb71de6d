"""GenQ: synthetic queries for a corpus from a T5 query generator, as training data.

The library of `python -m dualenc.genq`: T5 loading (`Generator`), jitted sampling (`generate`),
query filtering and the BEIR output (`write_beir`). Each document (title + " " + text, as BEIR's
generator reads it) gets `queries_per_doc` sampled queries (nucleus + top-k sampling, as BEIR's
`QueryGenerator`; greedy for one deterministic query). Exact duplicates of a document's query and
empty ones are dropped, and so are empty documents. Generation is jitted with a fixed-size
key/value cache (`models/t5.py`): greedy decoding equals transformers' `generate` token for token
(tests/genq_test.py).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dualenc import multihost, tokenization
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


# ----------------------------------------------------------------------------- data set


def corpus_path(data: str) -> Path:
    """The corpus file of a BEIR dir (corpus.jsonl[.gz]), or `data` itself when it is a file."""
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


def generate_dataset(
    model: str,
    data: str,
    output: str | Path,
    *,
    queries_per_doc: int = 3,
    max_doc_length: int = 384,
    max_query_length: int = 64,
    batch_size: int = 32,
    top_p: float = 0.95,
    top_k: int = 25,
    greedy: bool = False,
    limit: int = 0,
    seed: int = 0,
    prefix: str = "genQ",
) -> dict | None:
    """GenQ queries for the (first `limit`, non-empty) documents of `data`, written by process 0
    as a BEIR dir at `output`; returns its counts there (None on other processes)."""
    corpus = load_corpus(corpus_path(data), allow_empty=True)
    gen = Generator(model)
    if limit:
        corpus = dict(list(corpus.items())[:limit])
    kept = {i: d for i, d in corpus.items() if d.title.strip() or d.text.strip()}
    skipped, corpus = len(corpus) - len(kept), kept  # nothing to ask about an empty document
    if not corpus:
        raise InputError(f"{data}: every document is empty")
    texts = [f"{d.title} {d.text}".strip() for d in corpus.values()]
    t0 = time.perf_counter()
    queries = generate_queries(
        gen,
        texts,
        num=queries_per_doc,
        max_doc_length=max_doc_length,
        max_query_length=max_query_length,
        batch_size=batch_size,
        greedy=greedy,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    secs = time.perf_counter() - t0
    counts = multihost.write_on_main(
        write_beir, Path(output), corpus, queries, prefix, barrier_name="genq"
    )
    if counts is not None:
        counts["skipped_empty_docs"] = skipped
        counts["seconds"] = round(secs, 1)
    return counts
