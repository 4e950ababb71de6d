"""Search a saved index from the command line.

    python -m dualenc.search --index DIR --query "what causes fever" --k 10
    python -m dualenc.search --index DIR < questions.txt      # one query per line, until EOF
    python -m dualenc.search --build --kind exact --model M --corpus CORPUS.jsonl --index DIR

An index dir (from `--build` or `dualenc.evaluate --save_index`) records the model and the corpus
path, so queries are embedded with the same model and hits print with title and a snippet.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from dualenc.io import InputError


def build_index(
    kind: str,
    corpus_path: str,
    out_dir: str,
    *,
    model: str = "",
    similarity: str = "dot",
    batch_size: int = 64,
    max_length: int = 0,
    cache_dir: str = "",
) -> None:
    """Encodes (or tokenises) a BEIR corpus file and saves a searchable index dir."""
    from dualenc.data.beir import load_corpus
    from dualenc.encode import beir_doc_text
    from dualenc.index import save_index_dir
    from dualenc.index.base import IndexManifest

    corpus = load_corpus(corpus_path)
    doc_ids = list(corpus)
    texts = [beir_doc_text(corpus[d]) for d in doc_ids]
    m = IndexManifest(kind=kind, count=len(doc_ids), corpus_path=str(Path(corpus_path).resolve()))
    if kind == "bm25":
        from dualenc.index.bm25 import BM25Index

        save_index_dir(BM25Index.build(texts, m), doc_ids, out_dir)
        return
    from dualenc.corpus_cache import cached_embeddings
    from dualenc.encode import encode_texts
    from dualenc.evaluate import build_dense_index, default_config
    from dualenc.models.loading import load_encoder

    enc = load_encoder(model)
    max_length = max_length or enc.max_length
    emb, _ = cached_embeddings(
        enc,
        doc_ids,
        texts,
        cache_dir=cache_dir or None,
        max_length=max_length,
        encode_fn=lambda t: encode_texts(
            enc, t, batch_size=batch_size, max_length=max_length, progress=True
        ),
    )
    m.model_source, m.weights_hash = str(enc.source), enc.weights_hash()
    m.pooling, m.normalize, m.max_length = str(enc.pooling), bool(enc.normalize), max_length
    cfg = default_config()
    with cfg.unlocked():
        cfg.similarity = similarity
    save_index_dir(build_dense_index(emb, m, kind, cfg), doc_ids, out_dir)


class Searcher:
    """A loaded index + what it needs to answer text queries (encoder, ids, titles)."""

    def __init__(self, index_dir: str):
        from dualenc.data.beir import load_corpus
        from dualenc.index import load_doc_ids, load_index, read_manifest

        self.manifest = read_manifest(index_dir)
        self.doc_ids = load_doc_ids(index_dir)
        self.encoder = None
        if self.manifest.kind != "bm25":
            from dualenc.models.loading import load_encoder

            self.encoder = load_encoder(self.manifest.model_source)
        wh = self.encoder.weights_hash() if self.encoder else None
        self.index = load_index(index_dir, weights_hash=wh)
        path = self.manifest.corpus_path
        self.corpus = load_corpus(path) if path and Path(path).exists() else {}

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """[(doc id, score)] best first."""
        if self.encoder is None:
            scores, rows = self.index.search_texts([query], k)
        else:
            from dualenc.encode import encode_texts

            q = encode_texts(
                self.encoder,
                [query],
                batch_size=1,
                max_length=self.manifest.max_length or None,
                progress=False,
            )
            scores, rows = self.index.search(q, k)
        return [
            (self.doc_ids[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0
        ]

    def format(self, hits, width: int = 100) -> str:
        lines = []
        for rank, (doc_id, score) in enumerate(hits, start=1):
            doc = self.corpus.get(doc_id)
            title = (getattr(doc, "title", "") or "") if doc else ""
            text = (getattr(doc, "text", "") or "") if doc else ""
            snippet = textwrap.shorten(text, width=width, placeholder=" …") if text else ""
            lines.append(f"{rank:>3}  {score:9.4f}  {doc_id}  {title}".rstrip())
            if snippet:
                lines.append(f"     {snippet}")
        return "\n".join(lines) if lines else "(no hits)"


def main(argv):
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    if not f.index:
        raise InputError("--index DIR is required", field="index")
    if f.build:
        if not f.corpus:
            raise InputError("--build needs --corpus", field="corpus")
        build_index(
            f.kind, f.corpus, f.index, model=f.model, similarity=f.similarity, cache_dir=f.cache_dir
        )
        if f.query is None:
            print(f"index written to {f.index}")
            return
    s = Searcher(f.index)
    if f.query is not None:
        print(s.format(s.search(f.query, f.k)))
        return
    for line in sys.stdin:
        if line.strip():
            print(f"> {line.strip()}\n{s.format(s.search(line.strip(), f.k))}\n", flush=True)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("index", "", "Index directory (read, or written with --build).")
    flags.DEFINE_string("query", None, "One query; without it, queries are read from stdin.")
    flags.DEFINE_integer("k", 10, "Hits to print.")
    flags.DEFINE_boolean("build", False, "Build the index dir first (needs --corpus).")
    flags.DEFINE_enum("kind", "exact", ["exact", "scann", "bm25"], "Index kind for --build.")
    flags.DEFINE_string("model", "", "Encoder for --build (dense kinds).")
    flags.DEFINE_string("corpus", "", "BEIR corpus.jsonl[.gz] for --build.")
    flags.DEFINE_enum("similarity", "dot", ["dot", "cos"], "Similarity for --build.")
    flags.DEFINE_string("cache_dir", "", "Corpus embedding cache for --build.")
    app.run(main)
