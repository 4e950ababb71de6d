"""End-to-end evaluation on a tiny BEIR dir with a tiny random BERT; SciFact figures (slow)."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer

from dualenc.index.fusion import fuse
from dualenc.inference import shards
from dualenc.io import InputError
from dualenc.metrics import evaluate_run
from dualenc.retrieval.evaluate import default_config, run_evaluation
from dualenc.retrieval.report import compare
from dualenc.retrieval.search import Searcher

DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France."),
    ("d2", "Berlin", "Berlin is the capital of Germany."),
    ("d3", "Rome", "Rome is the capital city of Italy."),
    ("d4", "Cats", "The cat is a small domesticated carnivorous mammal."),
    ("d5", "Dogs", "The dog is a domesticated descendant of the wolf."),
    ("d6", "Physics", "Wilhelm Rontgen received the first Nobel Prize in Physics in 1901."),
    ("d7", "Python", "Python is a programming language created by Guido van Rossum."),
    ("d8", "Everest", "Mount Everest is the highest mountain above sea level."),
]
QUERIES = [
    ("t1", "capital of France", ["Paris"]),
    ("t2", "who won the first physics nobel", ["Rontgen"]),
    ("t3", "highest mountain", ["Everest"]),
    ("r1", "capital of Germany", ["Berlin"]),
    ("r2", "domesticated wolf descendant", ["dog"]),
    ("r3", "programming language", ["Python"]),
]
QRELS = {
    "test": [("t1", "d1"), ("t2", "d6"), ("t3", "d8")],
    "train": [("r1", "d2"), ("r2", "d5"), ("r3", "d7")],
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    """(beir_dir, model_dir): a tiny BEIR dataset and a random 1-layer BERT with MiniLM's vocab."""
    root = tmp_path_factory.mktemp("tiny")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    with open(beir / "corpus.jsonl", "w") as f:
        for i, t, x in DOCS:
            f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    with open(beir / "queries.jsonl", "w") as f:
        for i, x, a in QUERIES:
            f.write(json.dumps({"_id": i, "text": x, "metadata": {"answers": a}}) + "\n")
    for split, rows in QRELS.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in rows]
        (beir / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model_dir = root / "bert"
    transformers.BertModel(cfg).save_pretrained(model_dir)
    for name in TOKENIZER_FILES:
        if (Path(minilm_path) / name).exists():
            shutil.copy(Path(minilm_path) / name, model_dir / name)
    return beir, model_dir


def _cfg(beir, model, out, **kw):
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(
            model=str(model),
            data=str(beir),
            output=str(out),
            k=5,
            fusion_depth=8,
            batch_size=4,
            max_length=32,
            progress=False,
            **kw,
        )
    return cfg


def _check_outputs(out: Path, n_queries: int):
    m = json.loads((out / "metrics.json").read_text())
    for key in ("nDCG@10", "RR@10", "R@10", "R@100", "AP", "P@10", "Acc@5", "Acc@20"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["num_queries"] == n_queries
    lines = (out / "run.trec").read_text().splitlines()
    assert lines
    for line in lines:
        qid, q0, docid, rank, score, tag = line.split()
        assert q0 == "Q0" and int(rank) >= 1 and float(score) == float(score)
        assert docid.startswith("d") and tag.startswith("dualenc-")
    assert {line.split()[0] for line in lines} <= {"t1", "t2", "t3"}
    assert (out / "report.md").read_text().startswith("# ")
    return m


@pytest.mark.parametrize("kind", ["exact", "bm25", "hybrid"])
def test_end_to_end(tiny, tmp_path, kind):
    beir, model = tiny
    extra = {"tune_split": "train"} if kind == "hybrid" else {}
    cache = tmp_path / "cache"
    m = run_evaluation(
        _cfg(
            beir,
            model,
            tmp_path / "out",
            index=kind,
            cache_dir=str(cache),
            save_index=str(tmp_path / "ix"),
            **extra,
        )
    )
    assert m == json.loads((tmp_path / "out" / "metrics.json").read_text())
    _check_outputs(tmp_path / "out", 3)
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    if kind == "bm25":
        assert m["RR@10"] == 1.0  # every test query shares its rare words with its doc
    if kind == "hybrid":
        assert info["tune_split"] == "train" and info["tune_queries"] == 3
        assert info["hybrid_weight"] in [float(w) for w in info["tune_scores"]]
    if kind == "exact":
        assert not info["cache_reused"]
        run_evaluation(_cfg(beir, model, tmp_path / "out2", index=kind, cache_dir=str(cache)))
        assert json.loads((tmp_path / "out2" / "info.json").read_text())["cache_reused"]
    if kind != "hybrid":
        # The saved index answers a text query exactly as the evaluation ranked that query (t1).
        s = Searcher(str(tmp_path / "ix"))
        hits = s.search("capital of France", k=3)
        t1 = [line.split() for line in (tmp_path / "out" / "run.trec").read_text().splitlines()]
        t1 = [(d, float(score)) for q, _, d, _, score, _ in t1 if q == "t1"][:3]
        assert len(hits) == 3 and [d for d, _ in hits] == [d for d, _ in t1]
        np.testing.assert_allclose([v for _, v in hits], [v for _, v in t1], atol=1e-4)
        if kind == "bm25":
            assert hits[0][0] == "d1" and "Paris" in s.format(hits)


def test_bad_config(tiny, tmp_path):
    beir, model = tiny
    with pytest.raises(InputError, match="refusing to tune"):
        run_evaluation(_cfg(beir, model, tmp_path, index="hybrid", tune_split="test"))
    with pytest.raises(InputError, match="unknown index"):
        run_evaluation(_cfg(beir, model, tmp_path, index="faiss"))
    with pytest.raises(InputError, match="unknown dtype"):
        run_evaluation(_cfg(beir, model, tmp_path, index="exact", dtype="float16"))
    with pytest.raises(InputError, match="unknown matmul_precision"):
        run_evaluation(_cfg(beir, model, tmp_path, index="exact", matmul_precision="fast"))
    with pytest.raises(InputError, match="not found"):
        run_evaluation(_cfg(tmp_path / "nope", model, tmp_path, index="bm25"))
    (tmp_path / "empty" / "qrels").mkdir(parents=True)
    with pytest.raises(InputError):  # no corpus / queries files
        run_evaluation(_cfg(tmp_path / "empty", model, tmp_path, index="bm25"))


def test_quantize_and_truncate_flags_reach_the_index(tiny, tmp_path):
    """--quantize / --rescore_* / --truncate_dim build the index they name: metrics.json reports
    its bytes (binary 32x, int8 codes 4x smaller than float32, plus 8 bytes of range per dim),
    rescoring that covers the corpus with float vectors ranks exactly like float search, and the
    saved int8 index answers `dualenc.search` as the evaluation ranked the query."""
    beir, model = tiny  # 8 docs, 32-dim random BERT
    kw = {"index": "exact", "cache_dir": str(tmp_path / "cache")}
    f32 = run_evaluation(_cfg(beir, model, tmp_path / "f32", **kw))
    assert f32["index_bytes"] == f32["float32_bytes"] == 8 * 32 * 4
    ix = tmp_path / "ix"
    i8 = run_evaluation(
        _cfg(beir, model, tmp_path / "i8", quantize="int8", save_index=str(ix), **kw)
    )
    assert i8["index_bytes"] == 8 * 32 + 2 * 32 * 4 and i8["float32_bytes"] == 8 * 32 * 4
    assert json.loads((tmp_path / "i8" / "metrics.json").read_text()) == i8
    assert "index_bytes" in (tmp_path / "i8" / "report.md").read_text()
    hits = Searcher(str(ix)).search("capital of France", k=3)
    t1 = [(d, v) for d, v in _trec(tmp_path / "i8" / "run.trec")["t1"][:3]]
    assert [d for d, _ in hits] == [d for d, _ in t1]
    np.testing.assert_allclose([v for _, v in hits], [v for _, v in t1], atol=1e-4)
    bf16 = Searcher(str(ix), dtype="bfloat16")  # `dualenc.search --dtype bfloat16`
    assert str(bf16.encoder.config.dtype) == "bfloat16"
    low = dict(bf16.search("capital of France", k=8))
    assert low != dict(Searcher(str(ix)).search("capital of France", k=8))  # computed in bf16
    np.testing.assert_allclose([low[d] for d, _ in hits], [v for _, v in hits], atol=5e-2)
    b = run_evaluation(
        _cfg(beir, model, tmp_path / "b0", quantize="binary", rescore_multiplier=0, **kw)
    )
    assert b["index_bytes"] * 32 == b["float32_bytes"] and b["rescore_bytes"] == 0
    assert all(v == int(v) for run in _trec(tmp_path / "b0" / "run.trec").values() for _, v in run)
    bf = run_evaluation(
        _cfg(beir, model, tmp_path / "bf", quantize="binary", rescore_with="float", **kw)
    )  # 4 x k=5 candidates cover the 8 docs
    assert bf["rescore_bytes"] == 8 * 32 * 4
    got, want = _trec(tmp_path / "bf" / "run.trec"), _trec(tmp_path / "f32" / "run.trec")
    for q in want:  # the random tower's scores tie to ~1e-6: compare scores, not orders
        np.testing.assert_allclose([v for _, v in got[q]], [v for _, v in want[q]], rtol=1e-6)
        same = dict(got[q]).keys() & dict(want[q]).keys()
        assert len(same) >= 2  # two top-5s of 8 docs share >= 2
        for d in same:  # a doc's rescored score is its float32 score
            assert dict(got[q])[d] == pytest.approx(dict(want[q])[d], rel=1e-6)
    tr = run_evaluation(_cfg(beir, model, tmp_path / "tr", truncate_dim=16, **kw))
    assert tr["index_bytes"] == 8 * 16 * 4
    info = json.loads((tmp_path / "tr" / "info.json").read_text())
    assert info["index"]["truncate_dim"] == 16


@pytest.mark.parametrize(
    "flag,field",
    [
        ("--quantize=int4", "quantize"),
        ("--rescore_multiplier=-1", "rescore_multiplier"),
        ("--rescore_with=fp16", "rescore_with"),
        ("--rescore_with=float", "rescore_with"),  # without --quantize it would do nothing
        ("--truncate_dim=33", "truncate_dim"),  # wider than the 32-dim model: known once loaded
    ],
)
def test_bad_quantize_flags_exit_2_naming_the_field(tiny, tmp_path, flag, field):
    beir, model = tiny
    cmd = [sys.executable, "-m", "dualenc.evaluate", f"--data={beir}", f"--model={model}"]
    cmd += ["--k=5", "--max_length=32", "--noprogress", f"--cache_dir={tmp_path}", flag]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent
    )
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"field '{field}'" in errors[0], r.stderr[-2000:]


def test_bf16_evaluation_loads_bf16_towers(tiny, minilm_path, tmp_path, monkeypatch):
    """--dtype reaches the encoders (it was float32 whatever the flag said): the bf16 run's
    towers compute in bf16 and real MiniLM's ranking stays close to the float32 run's."""
    from dualenc.retrieval import dense as ev

    beir, model = tiny[0], minilm_path
    seen = []
    load = ev.load_towers
    monkeypatch.setattr(ev, "load_towers", lambda m, **kw: seen.append(kw) or load(m, **kw))
    f32 = run_evaluation(_cfg(beir, model, tmp_path / "a", index="exact", cache=False))
    bf16 = run_evaluation(
        _cfg(beir, model, tmp_path / "b", index="exact", cache=False, dtype="bfloat16")
    )
    assert [kw.get("dtype") for kw in seen] == ["float32", "bfloat16"]
    assert f32["nDCG@10"] > 0.5 and abs(f32["nDCG@10"] - bf16["nDCG@10"]) < 0.1


def _trec(path: Path) -> dict[str, list[tuple[str, float]]]:
    """{qid: [(doc id, score)] in file (rank) order}."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        out.setdefault(qid, []).append((did, float(score)))
    return out


def _tiny_cross_encoder(path: Path, minilm_path) -> tuple[transformers.PreTrainedModel, object]:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    for name in TOKENIZER_FILES:
        if (Path(minilm_path) / name).exists():
            shutil.copy(Path(minilm_path) / name, path / name)
    return model, transformers.AutoTokenizer.from_pretrained(str(path))


def _ce_scores(model, tok, query: str, texts: list[str]) -> np.ndarray:
    enc = tok([query] * len(texts), texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits[:, 0].numpy()


def test_rerank(tiny, tmp_path, minilm_path):
    """BM25 then a tiny cross-encoder: the written run is the BM25 candidates in the order of
    the cross-encoder's (PyTorch) scores, oriented to demote BM25's correct first hit."""
    beir, model_dir = tiny
    ce = tmp_path / "ce"
    ce.mkdir()
    model, tok = _tiny_cross_encoder(ce, minilm_path)
    texts = {i: f"{t} {x}" for i, t, x in DOCS}
    queries = {i: q for i, q, _ in QUERIES}
    # BM25 ranks d1 first for t1 (RR@10 = 1). Orient the head so that d1 is not the
    # cross-encoder's best of t1's candidates: a reranker that does nothing keeps RR@10 = 1.
    run_evaluation(_cfg(beir, model_dir, tmp_path / "bm25", index="bm25"))
    first = _trec(tmp_path / "bm25" / "run.trec")
    assert first["t1"][0][0] == "d1" and len(first["t1"]) >= 2
    s = _ce_scores(model, tok, queries["t1"], [texts[d] for d, _ in first["t1"]])
    if s[0] >= s.max():
        with torch.no_grad():
            model.classifier.weight.neg_()
            model.classifier.bias.neg_()
    model.save_pretrained(ce)

    m = run_evaluation(_cfg(beir, model_dir, tmp_path / "out", index="bm25", rerank_model=str(ce)))
    _check_outputs(tmp_path / "out", 3)
    assert json.loads((tmp_path / "out" / "info.json").read_text())["rerank_model"] == str(ce)
    got = _trec(tmp_path / "out" / "run.trec")
    expected = {}
    for qid, hits in first.items():
        ce_s = _ce_scores(model, tok, queries[qid], [texts[d] for d, _ in hits])
        order = np.argsort(-ce_s, kind="stable")
        assert [d for d, _ in got[qid]] == [hits[i][0] for i in order], qid
        np.testing.assert_allclose([v for _, v in got[qid]], ce_s[order], atol=1e-4)
        expected[qid] = {hits[i][0]: float(ce_s[i]) for i in order}
    assert got["t1"][0][0] != "d1"  # BM25's first hit is demoted
    qrels = {q: {d: 1} for q, d in QRELS["test"]}
    want, _ = evaluate_run(expected, qrels, ("RR@10", "nDCG@10"))
    assert m["RR@10"] == pytest.approx(want["RR@10"]) and m["RR@10"] < 1.0
    assert m["nDCG@10"] == pytest.approx(want["nDCG@10"])

    # first stage + w * CE: BM25 + 0.5 x CE (min-max per query) over the same candidates
    cfg = _cfg(beir, model_dir, tmp_path / "fused", index="bm25", rerank_model=str(ce))
    with cfg.unlocked():
        cfg.rerank_fusion_weight = 0.5
    run_evaluation(cfg)
    got = _trec(tmp_path / "fused" / "run.trec")
    for qid, hits in first.items():
        bm = {d: s for d, s in hits}
        want = fuse({qid: bm}, {qid: expected[qid]}, "minmax", 0.5)[qid]
        assert [d for d, _ in got[qid]] == list(want), qid
        np.testing.assert_allclose([v for _, v in got[qid]], list(want.values()), atol=1e-4)
    assert [d for d, _ in got["t1"]] != [d for d, _ in first["t1"]]  # the CE moved something
    assert got["t1"] != _trec(tmp_path / "out" / "run.trec")["t1"]  # and BM25 still counts


def test_cli_and_comparison_report(tiny, tmp_path):
    beir, _ = tiny
    cmd = [
        sys.executable,
        "-m",
        "dualenc.evaluate",
        f"--data={beir}",
        "--index=bm25",
        f"--output={tmp_path / 'bm25'}",
        "--k=5",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent
    )
    assert r.returncode == 0, r.stderr[-2000:]
    _check_outputs(tmp_path / "bm25", 3)
    table = compare(
        {"BM25": str(tmp_path / "bm25"), "BM25 again": str(tmp_path / "bm25")}, tmp_path / "cmp"
    )
    assert "| BM25 |" in table and "Top-5 acc" in table
    assert (tmp_path / "cmp" / "recall.png").read_bytes()[:4] == b"\x89PNG"


def _scifact_subset(src: Path, dst: Path, n_queries: int, n_docs: int) -> dict:
    """A BEIR dir with SciFact's first `n_queries` test queries, their relevant docs and random
    other docs up to `n_docs`; returns its qrels."""
    qrels: dict[str, dict[str, int]] = {}
    for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, rel = line.split("\t")
        qrels.setdefault(q, {})[d] = int(rel)
    qrels = {q: qrels[q] for q in sorted(qrels)[:n_queries]}
    with gzip.open(src / "corpus.jsonl.gz", "rt") as f:
        corpus = [json.loads(line) for line in f]
    wanted = {d for rels in qrels.values() for d in rels}
    others = [r for r in corpus if r["_id"] not in wanted]
    pick = np.random.default_rng(0).choice(len(others), n_docs - len(wanted), replace=False)
    docs = [r for r in corpus if r["_id"] in wanted] + [others[i] for i in sorted(pick)]
    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text().splitlines()]
    (dst / "queries.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in queries if r["_id"] in qrels)
    )
    rows = [f"{q}\t{d}\t{r}" for q, rels in qrels.items() for d, r in rels.items()]
    (dst / "qrels" / "test.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *rows]))
    return qrels


@pytest.mark.slow
@pytest.mark.data
def test_scifact_subset_matches_sentence_transformers(shared_data, minilm_path, tmp_path):
    """Real all-MiniLM-L6-v2 on real SciFact text (60 test queries, 400 docs): dualenc's corpus
    embeddings, ranking and nDCG@10 equal sentence-transformers' on the same subset.

    The full-corpus figures (exact 0.6451, ScaNN tree+AH, BM25) are checked by
    benchmarks/scifact_reference.py; this is the cheaper CI check of the same dense path."""
    qrels = _scifact_subset(shared_data / "scifact", tmp_path / "sub", n_queries=60, n_docs=400)
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(
            model=str(minilm_path),
            data=str(tmp_path / "sub"),
            index="exact",
            output=str(tmp_path / "out"),
            cache_dir=str(tmp_path / "cache"),
            progress=False,
        )
    m = run_evaluation(cfg)
    (shard_dir,) = (tmp_path / "cache").glob("shards-*")
    ours = shards.open_shards(shard_dir).to_array()  # (400, 384), in corpus-file order

    st = SentenceTransformer(str(minilm_path), device="cpu")
    docs = [json.loads(line) for line in (tmp_path / "sub" / "corpus.jsonl").open()]
    queries = {
        r["_id"]: r["text"] for r in map(json.loads, (tmp_path / "sub" / "queries.jsonl").open())
    }
    ref = st.encode([f"{d['title']} {d['text']}".strip() for d in docs], batch_size=32)
    assert ours.shape == ref.shape == (400, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    qids = sorted(queries)
    scores = st.encode([queries[q] for q in qids], batch_size=32) @ ref.T  # (60, 400)
    top = np.argsort(-scores, axis=1)[:, :10]
    run = {q: {docs[j]["_id"]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}
    want, _ = evaluate_run(run, qrels, ("nDCG@10", "R@10"))
    got = _trec(tmp_path / "out" / "run.trec")
    same = np.mean(
        [
            [d for d, _ in got[q][:10]] == [docs[j]["_id"] for j in top[i]]
            for i, q in enumerate(qids)
        ]
    )
    print(f"SciFact subset nDCG@10: dualenc {m['nDCG@10']:.4f}, ST {want['nDCG@10']:.4f}")
    assert same >= 0.95, same
    assert m["nDCG@10"] == pytest.approx(want["nDCG@10"], abs=2e-3)
    assert m["R@10"] == pytest.approx(want["R@10"], abs=2e-3)
    assert m["nDCG@10"] > 0.5  # a working retriever; random ranking would give ~0.03


@pytest.mark.data
def test_scifact_bm25_reference(shared_data, tmp_path):
    """BM25 on the full SciFact test set: 0.6617 (data README); cheap, so it runs in CI."""
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(
            data=str(shared_data / "scifact"), index="bm25", output=str(tmp_path), progress=False
        )
    assert run_evaluation(cfg)["nDCG@10"] == pytest.approx(0.6617, abs=0.01)


def test_corpus_from_a_tfds_dataset(tiny, tmp_path):
    """--corpus DIR (a TFDS dataset from `dualenc.build_tfds`) replaces the data dir's
    corpus.jsonl: evaluating --data A --corpus tfds(B) gives exactly what a BEIR dir with B's
    corpus and A's queries and qrels gives (exact and BM25), not A's; the saved index prints B's
    titles read from the dataset; a missing corpus is one line."""
    from dualenc.data import tfds_corpus

    beir, model = tiny
    alt = tmp_path / "alt"  # A's queries and qrels, another corpus: texts reversed, titles marked
    shutil.copytree(beir, alt)
    with open(alt / "corpus.jsonl", "w") as f:
        for i, t, x in reversed(DOCS):
            f.write(json.dumps({"_id": i, "title": f"B {t}", "text": x[::-1]}) + "\n")
    built = tfds_corpus.build_corpus(alt / "corpus.jsonl", tmp_path / "tfds", format="beir")
    for index in ("exact", "bm25"):
        out = {name: tmp_path / f"{index}-{name}" for name in ("a", "b", "tfds")}
        a = run_evaluation(_cfg(beir, model, out["a"], index=index))
        b = run_evaluation(_cfg(alt, model, out["b"], index=index))
        ix = tmp_path / f"ix-{index}"
        got = run_evaluation(
            _cfg(beir, model, out["tfds"], index=index, corpus=str(built), save_index=str(ix))
        )
        assert got == b and _trec(out["tfds"] / "run.trec") == _trec(out["b"] / "run.trec")
        assert _trec(out["b"] / "run.trec") != _trec(out["a"] / "run.trec") and a != b
        corpus = Searcher(str(ix)).corpus
        assert sorted(corpus) == sorted(i for i, _, _ in DOCS)
        assert all(corpus[i].title == f"B {t}" for i, t, _ in DOCS)
    with pytest.raises(InputError, match="corpus not found"):
        run_evaluation(_cfg(beir, model, tmp_path / "x", index="bm25", corpus=str(tmp_path / "no")))
