"""The corpus cache, on by default: reuse, keys that must miss, --nocache, corrupt entries."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import tokenizers
from multihost_test import run_pair, run_single
from tiny_data import save_tiny_bert, write_beir

from dualenc.index.base import IndexManifest
from dualenc.inference import corpus_cache, encode
from dualenc.models.loading import encoder_from_params, load_encoder, load_towers
from dualenc.retrieval import engine
from dualenc.retrieval.evaluate import default_config, run_evaluation


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_path):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, seed=3)


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir"))


@pytest.fixture
def count_encodes(monkeypatch):
    """Lists the number of texts of every encode_texts call made by the evaluation engine."""
    calls = []
    real = engine.encode_texts

    def counted(encoder, texts, **kw):
        calls.append(len(texts))
        return real(encoder, texts, **kw)

    monkeypatch.setattr(engine, "encode_texts", counted)  # queries
    monkeypatch.setattr(encode, "encode_texts", counted)  # corpus shards (inference.shards)
    return calls


def _cfg(beir, model, out, **kw):
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(model=str(model), data=str(beir), split="dev", output=str(out), k=10)
        cfg.update(batch_size=16, max_length=32, progress=False, **kw)
    return cfg


def _info(out: Path) -> dict:
    return json.loads((out / "info.json").read_text())


def test_default_dir_reused_by_exact_then_scann(
    beir, tiny_model, tmp_path, monkeypatch, count_encodes
):
    """The new-user path: no cache flag at all, exact then scann then exact: one corpus encode."""
    monkeypatch.setenv("DUALENC_CACHE_DIR", str(tmp_path / "c"))
    m1 = run_evaluation(_cfg(beir, tiny_model, tmp_path / "o1"))
    assert count_encodes == [61, 20] and not _info(tmp_path / "o1")["cache_reused"]
    assert len(list((tmp_path / "c").glob("shards-*/emb-*.npy"))) == 1
    run_evaluation(_cfg(beir, tiny_model, tmp_path / "o2", index="scann"))
    m3 = run_evaluation(_cfg(beir, tiny_model, tmp_path / "o3"))
    assert count_encodes == [61, 20, 20, 20]  # only the queries after the first run
    assert _info(tmp_path / "o2")["cache_reused"] and _info(tmp_path / "o3")["cache_reused"]
    assert m1 == m3


def test_default_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("DUALENC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpus_cache.resolve_cache_dir() == tmp_path / "xdg" / "dualenc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert corpus_cache.default_cache_dir() == Path.home() / ".cache" / "dualenc"
    monkeypatch.setenv("DUALENC_CACHE_DIR", str(tmp_path / "env"))
    assert corpus_cache.resolve_cache_dir(True, "") == tmp_path / "env"
    assert corpus_cache.resolve_cache_dir(True, str(tmp_path / "flag")) == tmp_path / "flag"
    assert corpus_cache.resolve_cache_dir(False, str(tmp_path / "flag")) is None


def test_key_changes_miss(beir, tiny_model, tmp_path, monkeypatch):
    """max_length, weights, tokenizer, code version and corpus text each miss; the same hits."""
    enc = load_encoder(tiny_model, pooling="mean")
    ds = engine.load_split(str(beir), "dev")
    ids, texts = engine.corpus_texts(ds)
    kw = {"batch_size": 16, "cache_dir": tmp_path}

    def reused(encoder=enc, t=texts, max_length=32):
        return engine.encode_corpus(encoder, ids, t, max_length=max_length, **kw)[1]

    assert not reused() and reused()
    assert not reused(max_length=16)
    params = jax.tree.map(lambda x: x * 1.01, enc.params)
    assert not reused(encoder_from_params(enc, params))
    tok = tokenizers.Tokenizer.from_str(enc.tokenizer.to_str())
    tok.add_tokens(["qqqxyzzy"])
    assert not reused(dataclasses.replace(enc, tokenizer=tok))
    assert not reused(dataclasses.replace(enc, pooling="cls"))
    assert not reused(t=[*texts[:-1], texts[-1] + "x"])
    real = corpus_cache.code_version
    monkeypatch.setattr(corpus_cache, "code_version", lambda parts: real(parts) + "-edited")
    assert not reused()
    monkeypatch.undo()
    assert reused() and reused(max_length=16)  # the first entries are still there


def test_nocache_never_reads_or_writes(beir, tiny_model, tmp_path, monkeypatch, count_encodes):
    """A poisoned (well-formed, wrong) entry is read with the cache on and ignored with it off."""
    monkeypatch.setenv("DUALENC_CACHE_DIR", str(tmp_path / "c"))
    m1 = run_evaluation(_cfg(beir, tiny_model, tmp_path / "o1"))
    (emb,) = (tmp_path / "c").glob("shards-*/emb-*.npy")
    np.save(emb, np.zeros_like(np.load(emb)))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "c").rglob("*"))
    m_off = run_evaluation(_cfg(beir, tiny_model, tmp_path / "o2", cache=False))
    assert m_off == m1 and count_encodes == [61, 20, 61, 20]
    assert not _info(tmp_path / "o2")["cache_reused"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "c").rglob("*")) == before
    m_on = run_evaluation(_cfg(beir, tiny_model, tmp_path / "o3"))
    assert _info(tmp_path / "o3")["cache_reused"] and m_on["nDCG@10"] < m1["nDCG@10"]


def test_nocache_cli_writes_nothing(beir, tiny_model, tmp_path):
    """`--nocache` on the command line: the (default) cache dir is never created."""
    args = ["--model", str(tiny_model), "--data", str(beir), "--split", "dev", "--index", "bm25"]
    args += ["--output", str(tmp_path / "o"), "--progress=false", "--nocache"]
    args += ["--cache_dir", str(tmp_path / "c")]
    run_single("dualenc.evaluate", args, devices=1)
    assert (tmp_path / "o" / "metrics.json").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("damage", ["truncate_npy", "bad_json", "missing_npy"])
def test_corrupt_entry_is_recomputed(beir, tiny_model, tmp_path, damage):
    enc = load_encoder(tiny_model, pooling="mean")
    ids, texts = engine.corpus_texts(engine.load_split(str(beir), "dev"))
    kw = {"batch_size": 16, "max_length": 32, "cache_dir": tmp_path}
    ref, _ = engine.encode_corpus(enc, ids, texts, **kw)
    (entry,) = tmp_path.glob("emb-*")
    if damage == "truncate_npy":
        data = (entry / "embeddings.npy").read_bytes()
        (entry / "embeddings.npy").write_bytes(data[: len(data) // 2])
    elif damage == "bad_json":
        (entry / "manifest.json").write_text('{"weights_hash": ')
    else:
        (entry / "embeddings.npy").unlink()
    emb, reused = engine.encode_corpus(enc, ids, texts, **kw)
    assert not reused
    np.testing.assert_array_equal(emb, ref)
    assert engine.encode_corpus(enc, ids, texts, **kw)[1]  # the entry was rewritten


def test_bm25_cache(beir, tmp_path):
    ids, texts = engine.corpus_texts(engine.load_split(str(beir), "dev"))
    queries = ["apple river", "violin 12", "tiger"]

    def build(t=texts, **kw):
        m = IndexManifest(kind="bm25", count=len(ids), corpus_path="x")
        return corpus_cache.cached_bm25(t, ids, m, cache_dir=tmp_path, **kw)

    ix1, hit1 = build()
    ix2, hit2 = build()
    assert (hit1, hit2) == (False, True) and ix2.manifest.corpus_path == "x"
    assert isinstance(ix2.retriever.scores["data"], np.memmap)  # loaded memory-mapped
    for a, b in zip(ix1.search(queries, 5), ix2.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not build(k1=1.2)[1] and not build(t=[*texts[:-1], "new text"])[1]
    for f in tmp_path.glob("bm25-*/**/*.json*"):
        f.write_text("{broken")
    ix3, hit3 = build()
    assert not hit3
    np.testing.assert_array_equal(ix3.search(queries, 5)[1], ix1.search(queries, 5)[1])


def test_two_processes_agree_and_only_process_0_writes(beir, tiny_model, tmp_path):
    """Process 0 holds an entry, process 1 (another cache dir) misses: both encode (the hosts
    agree on the miss) and process 1 writes nothing."""
    c0, c1 = tmp_path / "c0", tmp_path / "c1"
    _, p_enc = load_towers(str(tiny_model))
    ids, texts = engine.corpus_texts(engine.load_split(str(beir), "dev"))
    assert not engine.encode_corpus(p_enc, ids, texts, max_length=32, cache_dir=c0)[1]
    (entry,) = c0.glob("emb-*")
    common = ["--model", str(tiny_model), "--data", str(beir), "--split", "dev"]
    common += ["--index", "exact", "--batch_size", "16", "--max_length", "32"]
    common += ["--progress=false", "--output", str(tmp_path / "o")]
    res = run_pair("dualenc.evaluate", [[*common, "--cache_dir", str(c)] for c in (c0, c1)])
    assert not _info(tmp_path / "o")["cache_reused"]
    assert not c1.exists() and list(c0.glob("emb-*")) == [entry]
    assert not any("reusing cached corpus embeddings" in err for _, _, err in res)
