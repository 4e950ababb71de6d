"""Dense retrieval for evaluation: towers + corpus embedding shards + index (the part of
`retrieval.evaluate` that encodes and searches; its own module so that evaluate stays a driver).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from dualenc import multihost
from dualenc.data import corpus_source
from dualenc.data.corpus_source import doc_text
from dualenc.index.base import IndexManifest, Run
from dualenc.index.exact import ExactIndex
from dualenc.index.quantized import QuantizedIndex
from dualenc.index.scann_index import ScannIndex
from dualenc.index.sharded import ShardedExactIndex
from dualenc.inference import chunking, corpus_cache, corpus_encode
from dualenc.inference import shards as shards_lib
from dualenc.io import InputError, atomic_dir
from dualenc.models.loading import load_towers
from dualenc.retrieval import engine

log = logging.getLogger(__name__)


def corpus_file(root: Path) -> Path:
    """root/corpus.jsonl, else root/corpus.jsonl.gz."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (root / name).exists():
            return root / name
    raise InputError("no corpus.jsonl[.gz]", path=root)


def corpus_path(cfg) -> Path:
    """The corpus evaluated: `cfg.corpus` (a TFDS dataset dir, a JSONL / TSV file) when set,
    else the data dir's corpus.jsonl[.gz]; queries and qrels always come from `cfg.data`."""
    return Path(cfg.corpus) if cfg.get("corpus") else corpus_file(Path(cfg.data))


class DenseRetriever:
    """Towers + corpus embedding shards + index, built once and reused for test and tune splits.

    The corpus (`source`, a `CorpusSource`; else `doc_ids` + `texts` in memory), or with
    `chunk_size` its chunks (`chunking.ChunkSource`, read from it lazily), is encoded into
    memory-mapped shards in the corpus cache, each host its own (`inference.shards`); exact
    float32 search streams them (`index.sharded`), so no host holds the (N, D) matrix. ScaNN and
    the quantised indexes are built from the concatenated shards."""

    def __init__(self, cfg, doc_ids, texts, kind: str, source=None):
        if not cfg.model:
            raise InputError("--model is required for dense retrieval", field="model")
        self.cfg, self.doc_ids = cfg, doc_ids
        # encoder = the passage tower
        self.q_encoder, self.encoder = load_towers(cfg.model, dtype=cfg.get("dtype", "float32"))
        self.max_length = cfg.max_length or self.encoder.max_length
        self.chunks, self.chunk_info = None, None
        self.ids = doc_ids  # what is indexed: docs, or their chunks
        text_fn = doc_text
        if source is None:  # in memory: 'title text' strings, chunked as texts without titles
            source, text_fn = corpus_source.from_texts(texts, doc_ids), plain_text
        if cfg.chunk_size > 0:
            self.chunks = chunking.ChunkSource(
                source, self.encoder.tokenizer, int(cfg.chunk_size), int(cfg.chunk_overlap)
            )
            self.ids = chunking.ChunkIds(self.chunks, doc_ids)
            source, text_fn = self.chunks, plain_text
            self.chunk_info = {
                "size": int(cfg.chunk_size),
                "overlap": int(cfg.chunk_overlap),
                **self.chunks.stats(),
            }
            log.info("chunked the corpus: %s", self.chunk_info)
        t = time.time()
        self.shards, self.reused = corpus_encode.cached_shards(
            self.encoder,
            source,
            cache_dir=corpus_cache.resolve_cache_dir(cfg.cache, cfg.cache_dir),
            max_length=int(self.max_length),
            shard_rows=int(cfg.get("shard_size", 32768)),
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            text_fn=text_fn,
        )
        self.encode_s = time.time() - t
        m = IndexManifest(
            kind=kind,
            count=len(self.ids),
            model_source=str(cfg.model),
            weights_hash=self.encoder.weights_hash(),
            pooling=str(self.encoder.pooling),
            normalize=bool(self.encoder.normalize),
            corpus_path=str(corpus_path(cfg).resolve()),
            max_length=int(self.max_length),
        )
        t = time.time()
        self.index = build_dense_index(self.shards, m, kind, cfg)
        self.build_s = time.time() - t

    def run(self, qids, queries, k: int) -> Run:
        """Top-k docs per query; with chunks, each doc's best chunk (exact MaxP top-k), the
        chunk hits kept as rows (no chunk id strings)."""
        depth = chunking.chunk_depth(k, self.chunks) if self.chunks else k
        run = engine.dense_run(
            self.q_encoder,
            self.index,
            qids,
            list(queries),
            range(len(self.chunks)) if self.chunks else self.ids,
            depth,
            batch_size=self.cfg.batch_size,
            max_length=self.cfg.max_length or self.q_encoder.max_length,
            progress=self.cfg.progress,
            mesh=shards_lib.local_mesh() if isinstance(self.index, ShardedExactIndex) else None,
        )
        return chunking.max_p(run, self.chunks, self.doc_ids, k) if self.chunks else run


def plain_text(doc) -> str:
    """The text of an in-memory row as given (already 'title text', or a chunk)."""
    return doc.text


def build_dense_index(p_emb, manifest, kind: str, cfg):
    """Exact (float32, or int8 / binary with `quantize`) or ScaNN index over (N, D) embeddings
    or `EmbeddingShards` (float32 exact: searched shard by shard, each host its own) with the
    config's similarity, truncation and params."""
    if isinstance(p_emb, shards_lib.EmbeddingShards):
        if kind == "exact" and not cfg.get("quantize"):
            return ShardedExactIndex(
                p_emb,
                manifest,
                similarity=cfg.similarity,
                truncate_dim=int(cfg.get("truncate_dim", 0)),
            )
        if kind == "scann":
            return shared_scann(p_emb, manifest, cfg)
        p_emb = p_emb.to_array()
    if kind == "scann":
        return ScannIndex.build(
            p_emb, manifest, similarity=cfg.similarity, k=cfg.k, **cfg.scann.to_dict()
        )
    if cfg.get("quantize"):
        return QuantizedIndex.build(
            p_emb,
            manifest,
            precision=cfg.quantize,
            rescore_multiplier=int(cfg.rescore_multiplier),
            rescore_with=cfg.rescore_with,
            truncate_dim=int(cfg.truncate_dim),
            similarity=cfg.similarity,
            calibration_size=int(cfg.calibration_size),
        )
    return ExactIndex(
        p_emb, manifest, similarity=cfg.similarity, truncate_dim=int(cfg.get("truncate_dim", 0))
    )


def shared_scann(shards, manifest, cfg) -> ScannIndex:
    """A ScaNN index over the shards, built ONCE: process 0 builds it (the tree trained on a
    sample of `training_sample_size` vectors) and saves it beside the shards; every other
    process, and every later run with the same shards and parameters, loads it."""
    params = {**cfg.scann.to_dict(), "k": int(cfg.k), "similarity": cfg.similarity}
    digest = hashlib.sha256(json.dumps([shards.tag, params], sort_keys=True).encode())
    d = shards.dir / f"scann-{digest.hexdigest()[:16]}"
    if not (d / "manifest.json").exists():
        if multihost.is_main():
            missing = [j for j in range(len(shards.ranges)) if not shards.path(j).exists()]
            if missing:
                raise InputError(
                    f"ScaNN on several hosts needs every shard in one shared cache dir "
                    f"(--cache_dir); shard {missing[0]} is not visible here",
                    path=shards.dir,
                )
            index = ScannIndex.build(
                shards.to_array(),
                manifest,
                similarity=cfg.similarity,
                k=cfg.k,
                **cfg.scann.to_dict(),
            )
            with atomic_dir(d) as tmp:
                index.save(tmp)
        multihost.wait_all("scann:built")
    index = ScannIndex.load(d)
    index.manifest = _with_params(manifest, index.manifest)
    return index


def _with_params(manifest, saved):
    """This run's manifest (paths, model) with the saved index's kind, shape and params."""
    manifest.kind, manifest.similarity, manifest.count = saved.kind, saved.similarity, saved.count
    manifest.dim, manifest.dtype, manifest.params = saved.dim, saved.dtype, saved.params
    return manifest
