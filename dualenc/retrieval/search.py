"""Searching a saved index by text (the library behind `python -m dualenc.search`).

`build_index` encodes (or tokenises) a BEIR corpus into an index dir that records the model and
the corpus path; `Searcher` opens such a dir, embeds queries with the same model (the query tower
of a separate-tower export) and formats hits with title and snippet. Empty documents are indexed
(one warning); BM25 never retrieves them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from dualenc import multihost
from dualenc.data import corpus_source
from dualenc.data.beir import load_corpus
from dualenc.data.corpus_source import open_corpus, read_ids
from dualenc.index import load_doc_ids, load_index, read_manifest, save_index_dir, write_index_dir
from dualenc.index.base import IndexManifest
from dualenc.index.bm25 import BM25Index
from dualenc.inference.encode import beir_doc_text, encode_texts
from dualenc.models.loading import load_towers
from dualenc.retrieval import engine
from dualenc.retrieval.dense import build_dense_index
from dualenc.retrieval.evaluate import default_config


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
    dtype: str = "float32",
) -> None:
    """Encodes (or tokenises) a BEIR corpus file and saves a searchable index dir.

    Every process calls it (encoding is sharded over all hosts); process 0 writes. `dtype` is
    the encoder's compute dtype (its weights, and so the index's weights hash, stay as saved).
    BM25 streams the corpus (`BM25Index.write_streamed`): neither its texts nor their tokens
    are held.
    """
    if kind == "bm25":
        source = open_corpus(corpus_path, allow_empty=True)
        doc_ids = read_ids(source)
        m = IndexManifest(
            kind=kind, count=len(doc_ids), corpus_path=str(Path(corpus_path).resolve())
        )
        if multihost.is_main():
            write_index_dir(lambda tmp: BM25Index.write_streamed(source, tmp, m), doc_ids, out_dir)
        multihost.barrier("search:index_written")
        return
    corpus = load_corpus(corpus_path, allow_empty=True)
    doc_ids = list(corpus)
    texts = [beir_doc_text(corpus[d]) for d in doc_ids]
    m = IndexManifest(kind=kind, count=len(doc_ids), corpus_path=str(Path(corpus_path).resolve()))
    _, enc = load_towers(model, dtype=dtype)  # the passage tower encodes documents
    max_length = max_length or enc.max_length
    emb, _ = engine.encode_corpus(
        enc,
        doc_ids,
        texts,
        batch_size=batch_size,
        max_length=max_length,
        progress=True,
        cache_dir=cache_dir or None,
    )
    m.model_source, m.weights_hash = str(model), enc.weights_hash()
    m.pooling, m.normalize, m.max_length = str(enc.pooling), bool(enc.normalize), max_length
    cfg = default_config()
    with cfg.unlocked():
        cfg.similarity = similarity
    index = build_dense_index(emb, m, kind, cfg)
    if multihost.is_main():
        save_index_dir(index, doc_ids, out_dir)
    multihost.barrier("search:index_written")


class Searcher:
    """A loaded index + what it needs to answer text queries (encoder, ids, titles).

    Host-local: it searches on this process's devices only (no collectives), so process 0 can
    answer queries alone in a multi-host launch.
    """

    def __init__(self, index_dir: str, dtype: str = "float32"):
        devices = jax.local_devices()
        self.mesh = Mesh(np.array(devices), ("data",))
        self.manifest = read_manifest(index_dir)
        self.doc_ids = load_doc_ids(index_dir)
        self.encoder = None  # the query tower (None for BM25)
        wh = None
        if self.manifest.kind != "bm25":
            self.encoder, p_enc = load_towers(self.manifest.model_source, dtype=dtype)
            wh = p_enc.weights_hash()  # the index holds passage-tower vectors
        self.index = load_index(index_dir, weights_hash=wh, devices=devices)
        self.corpus = _documents(self.manifest.corpus_path)

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """[(doc id, score)] best first."""
        if self.index.inputs == "text":
            q = [query]
        else:
            q = encode_texts(
                self.encoder,
                [query],
                batch_size=1,
                max_length=self.manifest.max_length or None,
                mesh=self.mesh,
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


def _documents(path: str) -> dict:
    """{doc id: Doc} of the index's corpus file, or of its TFDS dataset dir (evaluate --corpus);
    {} when it is gone (hits then print without titles)."""
    if not path or not Path(path).exists():
        return {}
    if Path(path).is_dir():
        source = corpus_source.open_corpus(path, allow_empty=True)
        return dict(zip(*source.read(0, len(source)), strict=True))
    return load_corpus(path, allow_empty=True)
