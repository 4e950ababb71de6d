"""Chunking long documents (`inference.chunking`, `evaluate --chunk_size`): windows cover the text
with the asked overlap, MaxP at `chunk_depth` is the exact document top-k, and a fact past the
truncation point is found only with chunks."""

import functools
import json

import numpy as np
import pytest
import tokenizers

from dualenc.data import corpus_source
from dualenc.data.beir import Doc
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


def eager_chunks(tok, ids, docs, size, overlap):
    """The in-memory chunking `ChunkSource` replaced (every chunk's id, text and parent in
    lists): the oracle it must equal."""
    out_ids, texts, parent = [], [], []
    for i, (d, doc) in enumerate(zip(ids, docs, strict=True)):
        for j, w in enumerate(chunking.windows(tok, doc.text, size, overlap)):
            out_ids.append(f"{d}#{j}")
            texts.append(f"{doc.title} {w}".strip())
            parent.append(i)
    return out_ids, texts, parent


def _mixed_corpus():
    """Empty, short, long, unicode and titled documents, in an order that puts long ones
    next to each other (a read range then straddles two documents' windows)."""
    ids, docs = [], []
    for i, (title, text) in enumerate(
        [
            ("", ""),
            ("Title A", TEXT),
            ("", "  tiny  "),
            ("Ünïcödé 标题", "日本語のテキスト、 emoji 🙂 " * 30 + " café naïve"),
            ("", TEXT[: len(TEXT) // 2]),
            ("T", ""),
            ("", TEXT),
            ("Last", "short"),
        ]
    ):
        ids.append(f"doc#{i}" if i == 4 else f"d{i}")  # a '#' in a doc id stays unambiguous
        docs.append(Doc(title, text))
    return ids, docs


@pytest.mark.parametrize("size,overlap", [(40, 8), (16, 0), (7, 6)])
def test_chunk_source_equals_eager_chunking_in_any_range(tok, monkeypatch, size, overlap):
    """Issue 25: the streamed chunks (counted in blocks of 3 documents) are the eager ones:
    same ids, texts and parents, read whole, in random ranges out of order, and by two
    independently built sources each reading its half (two hosts)."""
    monkeypatch.setattr(chunking, "READ_BLOCK", 3)
    ids, docs = _mixed_corpus()
    want_ids, want_texts, want_parent = eager_chunks(tok, ids, docs, size, overlap)
    src = chunking.ChunkSource(corpus_source.ListCorpus(ids, docs), tok, size, overlap)
    n = len(want_ids)
    assert len(src) == n > 2 * len(ids) and src.max_per_doc == max(np.bincount(want_parent))
    got_ids, got_docs = src.read(0, n)
    assert got_ids == want_ids and [d.text for d in got_docs] == want_texts
    assert all(d.title == "" for d in got_docs)
    assert src.parent(np.arange(n)).tolist() == want_parent
    assert list(chunking.ChunkIds(src, ids)) == want_ids
    assert [chunking.ChunkIds(src, ids)[r] for r in range(n)] == want_ids
    rng = np.random.default_rng(size)
    for _ in range(40):
        lo, hi = sorted(rng.integers(0, n + 1, 2))
        got_ids, got_docs = src.read(int(lo), int(hi))
        assert got_ids == want_ids[lo:hi] and [d.text for d in got_docs] == want_texts[lo:hi]
    half = n // 2 + 1
    hosts = [chunking.ChunkSource(corpus_source.ListCorpus(ids, docs), tok, size, overlap)]
    hosts.append(chunking.ChunkSource(corpus_source.ListCorpus(ids, docs), tok, size, overlap))
    parts = [hosts[0].read(0, half), hosts[1].read(half, n)]
    assert parts[0][0] + parts[1][0] == want_ids
    for step in (1, 2, 5):  # consecutive reads, the encoder's pattern
        fresh = chunking.ChunkSource(corpus_source.ListCorpus(ids, docs), tok, size, overlap)
        texts = [d.text for lo in range(0, n, step) for d in fresh.read(lo, lo + step)[1]]
        assert texts == want_texts


def test_consecutive_chunk_reads_stay_one_forward_pass(tok):
    """A chunk range starting inside the document the previous read ended with reuses it, so
    a gzipped source (which reopens on any backward read) is read forward once."""
    ids, docs = _mixed_corpus()
    calls = []

    class Recording(corpus_source.ListCorpus):
        def read(self, start, stop):
            calls.append((start, stop))
            return super().read(start, stop)

    src = chunking.ChunkSource(Recording(ids, docs), tok, 16, 4)
    calls.clear()
    for lo in range(0, len(src), 3):
        src.read(lo, lo + 3)
    assert all(b[0] >= a[1] for a, b in zip(calls, calls[1:], strict=False)), calls


def test_chunk_fingerprint_follows_corpus_tokenizer_size_overlap(tok):
    ids, docs = _mixed_corpus()

    def fp(t=tok, size=40, overlap=8, d=docs):
        return chunking.ChunkSource(
            corpus_source.ListCorpus(ids, d), t, size, overlap
        ).fingerprint()

    other_tok = tokenizers.Tokenizer.from_str(tok.to_str())
    other_tok.add_tokens(["zzzqx"])
    edited = [*docs[:-1], Doc("Last", "shorter")]
    base = fp()
    assert fp() == base  # stable: a rerun reuses its cached shards
    others = [fp(size=41), fp(overlap=9), fp(t=other_tok), fp(d=edited)]
    assert len({base, *others}) == 5
    assert base != corpus_source.ListCorpus(ids, docs).fingerprint()


def test_max_p_at_chunk_depth_is_the_exact_document_top_k(tok):
    """Documents of 1-5 windows of 4 one-token words: MaxP over the top `chunk_depth` chunk
    rows is the document top-k computed from every chunk."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, 40)
    doc_ids = [f"d{i}" for i in range(40)]
    docs = [Doc("", " ".join(["word"] * (4 * int(m)))) for m in sizes]
    ch = chunking.ChunkSource(corpus_source.ListCorpus(doc_ids, docs), tok, 4, 0)
    assert ch.counts.tolist() == sizes.tolist()
    parent = [i for i, m in enumerate(sizes) for _ in range(m)]
    for q in range(20):
        scores = rng.normal(size=len(parent))
        for k in (1, 5, 10):
            d = chunking.chunk_depth(k, ch)
            top = dict(sorted(enumerate(scores), key=lambda kv: -kv[1])[:d])
            want = {}
            for i in range(40):
                want[doc_ids[i]] = max(s for s, p in zip(scores, parent, strict=True) if p == i)
            want = dict(sorted(want.items(), key=lambda kv: -kv[1])[:k])
            assert chunking.max_p({"q": top}, ch, doc_ids, k)["q"] == pytest.approx(want), (q, k)


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


def test_chunked_evaluation_streams_the_corpus(tmp_path, minilm_path, monkeypatch):
    """Issue 25: chunked evaluation never reads the corpus whole (every read of the source is
    at most a few documents when the blocks and shards are small) and gives the same metrics,
    ranking and saved chunk ids (those of the eager chunking) as reads of the whole corpus."""
    root = _long_doc_beir(tmp_path / "beir")
    kw = {"chunk_size": 48, "chunk_overlap": 16}
    whole = _cfg(root, minilm_path, tmp_path / "whole", **kw, save_index=str(tmp_path / "ix1"))
    m_whole = run_evaluation(whole)
    reads, opened = [], corpus_source.open_corpus

    class Recording:
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return len(self.src)

        def read(self, start, stop):
            reads.append((start, stop))
            return self.src.read(start, stop)

        def fingerprint(self):
            return self.src.fingerprint()

    monkeypatch.setattr(corpus_source, "open_corpus", lambda *a, **k: Recording(opened(*a, **k)))
    monkeypatch.setattr(
        corpus_source, "read_ids", functools.partial(corpus_source.read_ids, chunk=3)
    )
    monkeypatch.setattr(chunking, "READ_BLOCK", 3)
    small = _cfg(root, minilm_path, tmp_path / "small", **kw, save_index=str(tmp_path / "ix2"))
    with small.unlocked():
        small.shard_size = 2
    assert run_evaluation(small) == m_whole
    assert reads and max(hi - lo for lo, hi in reads) <= 3, reads
    # Shards of 2 chunks pack other encoder batches than one shard: scores may move in the
    # last float bits, the ranking may not.
    runs = [(tmp_path / d / "run.trec").read_text().split() for d in ("small", "whole")]
    assert [x for i, x in enumerate(runs[0]) if i % 6 != 4] == [
        x for i, x in enumerate(runs[1]) if i % 6 != 4
    ]
    np.testing.assert_allclose(
        [float(x) for x in runs[0][4::6]], [float(x) for x in runs[1][4::6]], rtol=1e-5
    )
    ids = json.loads((tmp_path / "ix2" / "doc_ids.json").read_text())
    assert ids == json.loads((tmp_path / "ix1" / "doc_ids.json").read_text())
    docs = [json.loads(x) for x in (root / "corpus.jsonl").read_text().splitlines()]
    want, _, _ = eager_chunks(
        load_tokenizer(minilm_path),
        [d["_id"] for d in docs],
        [Doc(d["title"], d["text"]) for d in docs],
        48,
        16,
    )
    assert ids == want


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
