"""Search a saved index from the command line (the library is `dualenc.retrieval.search`).

    python -m dualenc.search --index DIR --query "what causes fever" --k 10
    python -m dualenc.search --index DIR < questions.txt      # one query per line, until EOF
    python -m dualenc.search --build --kind exact --model M --corpus CORPUS.jsonl --index DIR

An index dir (from `--build` or `dualenc.evaluate --save_index`) records the model and the corpus
path, so queries are embedded with the same model and hits print with title and a snippet. The
model may be a separate-tower export (MODEL/query + MODEL/passage): documents are encoded with
the passage tower, queries with the query tower. Empty documents are indexed (one warning); BM25
never retrieves them. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import sys

from dualenc import multihost
from dualenc.io import InputError
from dualenc.models import target
from dualenc.retrieval.search import Searcher, build_index


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    multihost.initialize()
    target.set_precision(flags.FLAGS.matmul_precision)
    try:
        _main(flags.FLAGS)
    except InputError as e:  # bad user input: one clear line, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(f) -> None:
    if not f.index:
        raise InputError("--index DIR is required", field="index")
    if f.build:
        if not f.corpus:
            raise InputError("--build needs --corpus", field="corpus")
        build_index(
            f.kind,
            f.corpus,
            f.index,
            model=f.model,
            similarity=f.similarity,
            cache_dir=f.cache_dir,
            dtype=f.dtype,
        )
        if f.query is None:
            if multihost.is_main():
                print(f"index written to {f.index}")
            return
    if not multihost.is_main():
        return  # interactive search is host-local: process 0 answers
    s = Searcher(f.index, dtype=f.dtype)
    if f.query is not None:
        print(s.format(s.search(f.query, f.k)))
        return
    for line in sys.stdin:
        if line.strip():
            print(f"> {line.strip()}\n{s.format(s.search(line.strip(), f.k))}\n", flush=True)


if __name__ == "__main__":
    from absl import flags

    from dualenc import cli

    flags.DEFINE_string("index", "", "Index directory (read, or written with --build).")
    flags.DEFINE_string("query", None, "One query; without it, queries are read from stdin.")
    flags.DEFINE_integer("k", 10, "Hits to print.")
    flags.DEFINE_boolean("build", False, "Build the index dir first (needs --corpus).")
    flags.DEFINE_enum("kind", "exact", ["exact", "scann", "bm25"], "Index kind for --build.")
    flags.DEFINE_string("model", "", "Encoder for --build (dense kinds).")
    flags.DEFINE_string("corpus", "", "BEIR corpus.jsonl[.gz] for --build.")
    flags.DEFINE_enum("similarity", "dot", ["dot", "cos"], "Similarity for --build.")
    flags.DEFINE_string("cache_dir", "", "Corpus embedding cache for --build.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Encoder compute dtype.")
    cli.define_matmul_precision()
    cli.run(main)
