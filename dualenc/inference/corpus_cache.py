"""On-disk cache of corpus embeddings and BM25 indexes, on by default, keyed by what made them.

A dense entry is reused only when everything that determines the vectors matches: weights hash,
tokenizer, architecture config (dtype included), pooling, normalisation, max_length, the encoder's
code version (a hash of the modules that compute embeddings, plus the jax version) and a
fingerprint of the corpus (sha256 over ids and texts). A BM25 entry is keyed by the corpus
fingerprint (a streamed corpus: its source's), the BM25 parameters and its code version.
Entries are swapped in atomically; an unreadable or partial entry is ignored and recomputed,
never trusted and never fatal.

Where: `cache_dir` if given, else $DUALENC_CACHE_DIR, else $XDG_CACHE_HOME/dualenc, else
~/.cache/dualenc (`default_cache_dir`). With several hosts only process 0 writes, so a cache
shared by all hosts (NFS) is what lets a multi-host run reuse entries.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging

from dualenc.io import atomic_dir, write_json

T = TypeVar("T")
EMBEDDINGS, MANIFEST = "embeddings.npy", "manifest.json"
KEY_FILE = "cache_key.json"  # the key of a BM25 entry (its index manifest is manifest.json)
_PKG = Path(__file__).resolve().parent
# Modules whose code decides the embedding of a text (tokenisation, forward pass, pooling).
_ENCODER_CODE = ("encode.py", "packing.py", "shards.py", "models")
_BM25_CODE = ("index/bm25.py", "index/bm25_build.py")


def default_cache_dir() -> Path:
    """$DUALENC_CACHE_DIR, else $XDG_CACHE_HOME/dualenc, else ~/.cache/dualenc."""
    if os.environ.get("DUALENC_CACHE_DIR"):
        return Path(os.environ["DUALENC_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "dualenc"


def resolve_cache_dir(cache: bool = True, cache_dir: str | os.PathLike | None = "") -> Path | None:
    """The cache directory to use: None when caching is off, `cache_dir` when set, else default."""
    if not cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


@functools.cache
def code_version(parts: tuple[str, ...]) -> str:
    """sha256 over the package sources named by `parts` (files or dirs under dualenc/)."""
    h = hashlib.sha256(f"jax={jax.__version__}".encode())
    for part in parts:
        p = _PKG / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(_PKG)).encode())
            try:
                h.update(f.read_bytes())
            except OSError:  # e.g. a zipped install: fall back to the package version
                from dualenc import __version__

                h.update(__version__.encode())
    return h.hexdigest()[:16]


def corpus_fingerprint(doc_ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 over (id, text) pairs, length-prefixed so that no two corpora collide by joining."""
    h = hashlib.sha256()
    for d, t in zip(doc_ids, texts, strict=True):
        for s in (d, t):
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def _tokenizer_hash(encoder) -> str:
    tok = getattr(encoder, "tokenizer", None)
    if tok is None:
        return ""
    s = tok.to_str() if hasattr(tok, "to_str") else repr(tok)
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _config_str(encoder) -> str:
    cfg = getattr(encoder, "config", None)
    if dataclasses.is_dataclass(cfg):
        return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return repr(cfg)


def encoder_key(encoder, max_length: int) -> dict[str, Any]:
    """The fields of the encoder that determine the embeddings (a cache key without the corpus)."""
    return {
        "weights_hash": encoder.weights_hash(),
        "tokenizer_hash": _tokenizer_hash(encoder),
        "arch": str(getattr(encoder, "arch", "")),
        "config": _config_str(encoder),
        "pooling": str(encoder.pooling),
        "normalize": bool(encoder.normalize),
        "max_length": int(max_length),
        "code_version": code_version(_ENCODER_CODE),
        # 'highest' vs TPU's default bf16 passes give other f32 embeddings (None: XLA's default)
        "matmul_precision": jax.config.jax_default_matmul_precision,
    }


def cache_manifest(
    encoder, doc_ids: Sequence[str], texts: Sequence[str], max_length: int
) -> dict[str, Any]:
    """The fields that determine the embeddings (the cache key; dim/dtype are added on write)."""
    return {
        **encoder_key(encoder, max_length),
        "corpus_fingerprint": corpus_fingerprint(doc_ids, texts),
        "count": len(doc_ids),
    }


def _entry_dir(cache_dir: Path, key: dict[str, Any], prefix: str = "emb") -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{prefix}-{digest}"


def _read_entry(d: Path, key: dict[str, Any], key_file: str, load: Callable[[Path], T]) -> T | None:
    """`load(d)` when `d/key_file` holds `key`; None when absent, different or unreadable."""
    if not (d / key_file).exists():
        return None
    try:
        m = json.loads((d / key_file).read_text())
        if any(m.get(k) != v for k, v in key.items()):
            return None
        return load(d)
    except Exception as e:  # noqa: BLE001 - a broken entry of any kind is only a cache miss
        logging.warning("ignoring unreadable cache entry %s (%s: %s)", d, type(e).__name__, e)
        return None


def _write_entry(d: Path, save: Callable[[Path], None]) -> None:
    """Builds the entry in a temp dir, then swaps it in; a failure only logs (it is a cache)."""
    try:
        with atomic_dir(d) as tmp:
            save(tmp)
    except Exception as e:  # noqa: BLE001 - e.g. a read-only or full disk: carry on uncached
        logging.warning("could not write cache entry %s: %s", d, e)


def _load_embeddings(d: Path) -> np.ndarray:
    m = json.loads((d / MANIFEST).read_text())
    arr = np.load(d / EMBEDDINGS, allow_pickle=False)
    if arr.shape != (m.get("count"), m.get("dim")) or str(arr.dtype) != m.get("dtype"):
        raise ValueError(f"embeddings {arr.shape} {arr.dtype} disagree with the manifest")
    return arr


def load_cached(cache_dir: str | os.PathLike, key: dict[str, Any]) -> np.ndarray | None:
    """The cached (N, D) array for `key`, or None when absent, different or corrupt."""
    return _read_entry(_entry_dir(Path(cache_dir), key), key, MANIFEST, _load_embeddings)


def log_reuse(cache_dir: str | os.PathLike, key: dict[str, Any], emb: np.ndarray) -> None:
    d = _entry_dir(Path(cache_dir), key)
    logging.info("reusing cached corpus embeddings %s (%d x %d)", d, *emb.shape)


def save_cached(cache_dir: str | os.PathLike, key: dict[str, Any], emb: np.ndarray) -> None:
    """Writes `emb` under `key` (atomically; call it from one process only)."""

    def save(tmp: Path) -> None:
        np.save(tmp / EMBEDDINGS, emb)
        write_json(tmp / MANIFEST, {**key, "dim": int(emb.shape[1]), "dtype": str(emb.dtype)})

    _write_entry(_entry_dir(Path(cache_dir), key), save)


def cached_embeddings(
    encoder,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None,
    max_length: int,
    encode_fn: Callable[[list[str]], np.ndarray],
    write: bool = True,
) -> tuple[np.ndarray, bool]:
    """Returns (embeddings (N, D) float32, reused?) encoding with `encode_fn` on a miss.

    `cache_dir=None` neither reads nor writes; `write=False` reads only (non-main hosts)."""
    if cache_dir is None:
        return np.asarray(encode_fn(list(texts)), np.float32), False
    key = cache_manifest(encoder, doc_ids, texts, max_length)
    hit = load_cached(cache_dir, key)
    if hit is not None:
        log_reuse(cache_dir, key, hit)
        return hit, True
    emb = np.asarray(encode_fn(list(texts)), np.float32)
    if emb.shape[0] != len(doc_ids):
        raise ValueError(f"encoder returned {emb.shape[0]} vectors for {len(doc_ids)} texts")
    if write:
        save_cached(cache_dir, key, emb)
    return emb, False


def cached_bm25(
    texts: Sequence[str] | None,
    doc_ids: Sequence[str],
    manifest,
    *,
    cache_dir: str | os.PathLike | None,
    write: bool = True,
    source=None,
    **params: Any,
):
    """(BM25Index over `texts`, reused?): loaded from the cache when corpus and params match.

    `source` (a CorpusSource of the rows `doc_ids` names; `texts` then None) streams the corpus
    instead and keys the entry on `source.fingerprint()`. Either way the index is built in
    bounded memory (`BM25Index.build_streamed`) straight into the entry and opened
    memory-mapped. `manifest` (an IndexManifest) describes this run's corpus; it replaces the
    cached one."""
    from dualenc.index.bm25 import BM25Index, bm25_defaults

    corpus = source if source is not None else list(texts)
    if cache_dir is None:
        return BM25Index.build_streamed(corpus, manifest, **params), False
    fingerprint = source.fingerprint() if source is not None else corpus_fingerprint(doc_ids, texts)
    key = {
        "kind": "bm25",
        "params": json.dumps({**bm25_defaults(), **params}, sort_keys=True),
        "code_version": code_version(_BM25_CODE) + "-" + bm25_version(),
        "corpus_fingerprint": fingerprint,
        "count": len(doc_ids),
    }
    d = _entry_dir(Path(cache_dir), key, "bm25")
    hit = _read_entry(d, key, KEY_FILE, BM25Index.load)
    if hit is not None and hit.manifest.count == len(doc_ids):
        logging.info("reusing cached BM25 index %s (%d docs)", d, len(doc_ids))
        manifest.kind, manifest.count, manifest.dim = "bm25", len(doc_ids), 0
        manifest.similarity, manifest.params = "bm25", hit.manifest.params
        hit.manifest = manifest
        return hit, True
    if write:
        try:
            with atomic_dir(d) as tmp:
                m = BM25Index.write_streamed(corpus, tmp, manifest, **params)
                write_json(tmp / KEY_FILE, key)
        except OSError as e:  # e.g. a read-only or full disk: build it uncached
            logging.warning("could not write cache entry %s: %s", d, e)
        else:
            index = BM25Index.load(d)
            index.manifest = m
            return index, False
    return BM25Index.build_streamed(corpus, manifest, **params), False


def bm25_version() -> str:
    try:
        import bm25s

        return str(getattr(bm25s, "__version__", "unknown"))
    except ImportError:
        return "absent"
