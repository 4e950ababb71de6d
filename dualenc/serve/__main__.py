"""Serve a saved index: a JSON API and a search page (the library is `dualenc.serve`).

    python -m dualenc.serve --index DIR [--rerank_model CE --rerank_top 100]
                            [--bm25_index DIR2 --hybrid_weight 1.0] [--host 127.0.0.1 --port 8080]

DIR comes from `dualenc.evaluate --save_index` or `dualenc.search --build` (exact, quantised,
ScaNN or BM25); --bm25_index adds a BM25 index over the same documents for a hybrid. The server
compiles every shape it will use before it listens (warm-up), binds to 127.0.0.1 unless --host
says otherwise, and answers bad requests with a 4xx JSON line. Bad flags print one line on
stderr and exit with code 2.
"""

from __future__ import annotations

import logging
import sys

from absl import flags

from dualenc import cli
from dualenc.io import InputError

flags.DEFINE_string("index", "", "Index dir (dualenc.evaluate --save_index, search --build).")
flags.DEFINE_string("bm25_index", "", "A BM25 index dir over the same documents: hybrid search.")
flags.DEFINE_float("hybrid_weight", 1.0, "Hybrid: bm25 + weight * dense (after --fusion).")
flags.DEFINE_enum("fusion", "minmax", ["minmax", "zscore", "rrf"], "Hybrid score normalisation.")
flags.DEFINE_string("rerank_model", "", "Cross-encoder dir (*ForSequenceClassification).")
flags.DEFINE_integer("rerank_top", 100, "First-stage hits the cross-encoder rescores.")
flags.DEFINE_integer("rerank_max_length", 0, "Tokens per (query, doc) pair (0: the model's).")
flags.DEFINE_integer("rerank_batch", 32, "(query, doc) pairs per cross-encoder call.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 exposes it to the network).")
flags.DEFINE_integer("port", 8080, "TCP port.")
flags.DEFINE_integer("max_k", 100, "Largest k a request may ask for.")
flags.DEFINE_integer("max_batch", 32, "Queries per batched encode call (largest batch bucket).")
flags.DEFINE_float("max_wait_ms", 5.0, "How long the batcher waits to fill a batch.")
flags.DEFINE_integer("max_query_chars", 2048, "Longest query accepted.")
flags.DEFINE_integer("max_body_bytes", 256 * 1024, "Largest request body accepted.")
flags.DEFINE_integer("max_batch_queries", 64, "Most queries in one /search/batch request.")
flags.DEFINE_string("log_level", "warning", "uvicorn log level (info logs every request).")


def serve_config(f):
    from dualenc.serve.config import ServeConfig

    b = [n for n in ServeConfig.batch_buckets if n < f.max_batch]  # the defaults, up to max_batch
    return ServeConfig(
        max_k=f.max_k,
        default_k=min(10, f.max_k),
        max_batch=f.max_batch,
        batch_buckets=tuple(sorted(set(b) | {f.max_batch})),
        max_wait_ms=f.max_wait_ms,
        max_query_chars=f.max_query_chars,
        max_body_bytes=f.max_body_bytes,
        max_batch_queries=f.max_batch_queries,
        rerank_top=f.rerank_top,
        rerank_batch=f.rerank_batch,
    )


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        if not f.index:
            raise InputError("--index DIR is required", field="index")
        if not 0 < f.port < 65536:
            raise InputError(f"must be in 1..65535, got {f.port}", field="port")
        from dualenc.serve import SearchEngine, create_app

        engine = SearchEngine(
            f.index,
            rerank_model=f.rerank_model,
            rerank_max_length=f.rerank_max_length,
            bm25_index=f.bm25_index,
            hybrid_weight=f.hybrid_weight,
            fusion=f.fusion,
            config=serve_config(f),
        )
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"warming up ({engine.kind} index, {engine.manifest.count:,} documents)…", flush=True)
    n = engine.warm_up()
    print(f"compiled {n} programs; serving on http://{f.host}:{f.port}/", flush=True)
    uvicorn.run(create_app(engine), host=f.host, port=f.port, log_level=f.log_level)


if __name__ == "__main__":
    cli.run(main)
