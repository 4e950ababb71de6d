"""End-to-end evaluation on a tiny BEIR dir with a tiny random BERT; SciFact figures (slow)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dualenc.io import InputError

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    """(beir_dir, model_dir): a tiny BEIR dataset and a random 1-layer BERT with MiniLM's vocab."""
    transformers = pytest.importorskip("transformers")
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
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(minilm_path) / name).exists():
            shutil.copy(Path(minilm_path) / name, model_dir / name)
    return beir, model_dir


def _cfg(beir, model, out, **kw):
    from dualenc.evaluate import default_config

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
    from dualenc.evaluate import run_evaluation

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
        from dualenc.search import Searcher

        s = Searcher(str(tmp_path / "ix"))
        hits = s.search("capital of France", k=3)
        assert len(hits) == 3 and "Paris" in s.format(hits) or kind == "exact"


def test_bad_config(tiny, tmp_path):
    from dualenc.evaluate import run_evaluation

    beir, model = tiny
    with pytest.raises(InputError, match="refusing to tune"):
        run_evaluation(_cfg(beir, model, tmp_path, index="hybrid", tune_split="test"))
    with pytest.raises(InputError, match="unknown index"):
        run_evaluation(_cfg(beir, model, tmp_path, index="faiss"))
    with pytest.raises(InputError, match="not found"):
        run_evaluation(_cfg(tmp_path / "nope", model, tmp_path, index="bm25"))
    (tmp_path / "empty" / "qrels").mkdir(parents=True)
    with pytest.raises(InputError):  # no corpus / queries files
        run_evaluation(_cfg(tmp_path / "empty", model, tmp_path, index="bm25"))


def test_rerank(tiny, tmp_path, minilm_path):
    """With dualenc.rerank: a tiny random cross-encoder reranks; without: a clear error."""
    import importlib.util

    from dualenc.evaluate import run_evaluation

    beir, model = tiny
    cfg = _cfg(beir, model, tmp_path / "out", index="bm25", rerank_model=str(tmp_path / "ce"))
    if importlib.util.find_spec("dualenc.rerank") is None:
        with pytest.raises(NotImplementedError, match="reranking not available"):
            run_evaluation(cfg)
        return
    import transformers

    bert_cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    transformers.BertForSequenceClassification(bert_cfg).save_pretrained(tmp_path / "ce")
    shutil.copy(Path(minilm_path) / "tokenizer.json", tmp_path / "ce" / "tokenizer.json")
    run_evaluation(cfg)
    _check_outputs(tmp_path / "out", 3)
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["rerank_model"] == str(tmp_path / "ce")


def test_cli_and_comparison_report(tiny, tmp_path):
    from dualenc.report import compare

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


@pytest.mark.slow
@pytest.mark.data
def test_scifact_reference_figures(shared_data, minilm_path, tmp_path):
    """all-MiniLM-L6-v2 exact 0.6451, ScaNN within 0.005, BM25 0.6617 (data README figures).

    ScaNN runs with its defaults, which pick brute-force scoring for a 5k corpus.
    """
    from dualenc.evaluate import default_config, run_evaluation

    got = {}
    for kind in ("exact", "scann", "bm25"):
        cfg = default_config()
        with cfg.unlocked():
            cfg.update(
                model=str(minilm_path),
                data=str(shared_data / "scifact"),
                index=kind,
                output=str(tmp_path / kind),
                cache_dir="/tmp/dualenc_cache",
            )
        got[kind] = run_evaluation(cfg)["nDCG@10"]
    assert got["exact"] == pytest.approx(0.6451, abs=0.001)
    assert abs(got["scann"] - got["exact"]) <= 0.005
    assert got["bm25"] == pytest.approx(0.6617, abs=0.01)
