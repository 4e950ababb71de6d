"""Chunking long documents (`inference.chunking`, `evaluate --chunk_size`): windows cover the text
with the asked overlap, MaxP at `chunk_depth` is the exact document top-k, and a fact past the
truncation point is found only with chunks."""

import json

import numpy as np
import pytest

from dualenc.inference import chunking
from dualenc.io import InputError
from dualenc.retrieval.evaluate import default_config, run_evaluation
from dualenc.tokenization import load_tokenizer

TEXT = " ".join(f"word{i} alpha-beta, (gamma) delta" for i in range(60))  # 300+ tokens


@pytest.fixture(scope="module")
def tok(minilm_path):
    return load_tokenizer(minilm_path)


@pytest.mark.parametrize("size,overlap", [(50, 10), (64, 0), (7, 6)])
def test_windows_cover_the_text_with_the_overlap(tok, size, overlap):
    offs = tok.encode(TEXT, add_special_tokens=False).offsets
    n = len(offs)
    ws = chunking.windows(tok, TEXT, size, overlap)
    stride = size - overlap
    assert len(ws) == max(1, -(-(n - overlap) // stride))  # ceil: the last window ends at n
    spans, pos = [], 0
    for w in ws:  # locate each window in the text, in order
        start = TEXT.index(w, pos)
        spans.append((start, start + len(w)))
        pos = start + 1
    assert spans[0][0] == offs[0][0] and spans[-1][1] == offs[-1][1]
    token_starts = [s for s, _ in offs]
    for i, (s, e) in enumerate(spans):
        first = token_starts.index(s)  # a window starts on a token boundary...
        assert first == i * stride
        inside = [j for j, (a, b) in enumerate(offs) if a >= s and b <= e]
        assert len(inside) == min(size, n - first)  # ...and holds `size` tokens (the last fewer)
    for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        shared = [j for j, (a, b) in enumerate(offs) if a >= s1 and b <= e0]
        assert len(shared) == overlap


def test_short_and_empty_texts_are_one_chunk(tok):
    assert chunking.windows(tok, "  a short text ", 50, 10) == ["a short text"]
    assert chunking.windows(tok, "", 50, 10) == [""]
    with pytest.raises(ValueError):
        chunking.windows(tok, TEXT, 10, 10)


def test_chunk_corpus_prefixes_titles_and_maps_parents(tok):
    corpus = {"a": {"title": "Title A", "text": TEXT}, "b": {"title": "", "text": "tiny"}}
    ch = chunking.chunk_corpus(tok, corpus, 40, 8)
    assert ch.ids[0] == "a#0" and ch.ids[-1] == "b#0" and ch.texts[-1] == "tiny"
    assert all(t.startswith("Title A ") for t, p in zip(ch.texts, ch.parent, strict=True) if p == 0)
    assert ch.parent.count(0) == len(ch.ids) - 1 == ch.max_per_doc


def test_max_p_at_chunk_depth_is_the_exact_document_top_k():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, 40)
    parent = [i for i, m in enumerate(sizes) for _ in range(m)]
    doc_ids = [f"d{i}" for i in range(40)]
    ids = [f"d{p}#{j}" for j, p in enumerate(parent)]
    ch = chunking.Chunks(ids, ids, parent, doc_ids)
    for q in range(20):
        scores = rng.normal(size=len(ids))
        full = {"q": dict(zip(ids, scores, strict=True))}
        for k in (1, 5, 10):
            d = chunking.chunk_depth(k, ch)
            top = dict(sorted(full["q"].items(), key=lambda kv: -kv[1])[:d])
            want = {}
            for i in range(40):
                want[doc_ids[i]] = max(s for s, p in zip(scores, parent, strict=True) if p == i)
            want = dict(sorted(want.items(), key=lambda kv: -kv[1])[:k])
            assert chunking.max_p({"q": top}, ch, k)["q"] == pytest.approx(want), (q, k)


def _long_doc_beir(root):
    """Ten documents of filler; the relevant one states its fact after ~120 tokens."""
    rng = np.random.default_rng(0)
    vocab = "table river music garden window paper stone cloud forest bridge".split()
    docs = []
    for i in range(10):
        filler = " ".join(rng.choice(vocab, 100))
        tail = "the capital city of france is paris." if i == 3 else "nothing else here."
        docs.append({"_id": f"d{i}", "title": "", "text": f"{filler} {tail}"})
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    q = {"_id": "q0", "text": "what is the capital of france?"}
    (root / "queries.jsonl").write_text(json.dumps(q) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td3\t1\n")
    return root


def _cfg(root, model, out, **kw):
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(
            model=str(model),
            data=str(root),
            output=str(out),
            k=10,
            batch_size=8,
            max_length=64,  # truncates every document before its last sentence
            progress=False,
            cache=False,
            **kw,
        )
    return cfg


def test_a_fact_past_truncation_is_found_only_with_chunks(tmp_path, minilm_path):
    root = _long_doc_beir(tmp_path / "beir")
    whole = run_evaluation(_cfg(root, minilm_path, tmp_path / "whole"))
    chunked = run_evaluation(
        _cfg(root, minilm_path, tmp_path / "chunked", chunk_size=48, chunk_overlap=16)
    )
    assert chunked["RR@10"] == 1.0, chunked  # d3's last window names the fact
    assert whole["RR@10"] < 0.5, whole  # truncated at 64 tokens, d3 looks like filler
    info = json.loads((tmp_path / "chunked" / "info.json").read_text())
    assert info["chunking"]["docs"] == 10 and info["chunking"]["chunks"] > 10
    run = (tmp_path / "chunked" / "run.trec").read_text().split("\n")
    assert run[0].split()[2] == "d3"  # the run names documents, not chunks


def test_hybrid_fuses_bm25_with_chunked_dense_by_document(tmp_path, minilm_path):
    """Hybrid = BM25 over whole docs + MaxP dense over chunks: the fused run names documents,
    and d3 (whose fact only BM25 and the chunks see) stays on top."""
    root = _long_doc_beir(tmp_path / "beir")
    m = run_evaluation(
        _cfg(root, minilm_path, tmp_path / "h", index="hybrid", chunk_size=48, chunk_overlap=16)
    )
    assert m["RR@10"] == 1.0, m
    run = [x.split() for x in (tmp_path / "h" / "run.trec").read_text().splitlines()]
    assert {r[2] for r in run} <= {f"d{i}" for i in range(10)}  # no chunk ids leak


@pytest.mark.parametrize(
    "over,field",
    [
        ({"chunk_size": 16, "chunk_overlap": 16}, "chunk_overlap"),
        ({"chunk_size": -1}, "chunk_size"),
        ({"chunk_size": 64, "index": "bm25"}, "index"),
    ],
)
def test_bad_chunk_settings_name_the_field(tmp_path, minilm_path, over, field):
    root = _long_doc_beir(tmp_path / "beir")
    with pytest.raises(InputError, match=field):
        run_evaluation(_cfg(root, minilm_path, tmp_path / "o", **over))
