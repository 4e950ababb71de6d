"""The seed pipeline report: table values by hand, and an end-to-end run with tiny models."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tiny_data
import torch
import transformers
from tiny_data import save_tiny_bert, write_beir

from dualenc.io import InputError
from dualenc.metrics import answer_accuracy
from dualenc.retrieval import pipeline_report

DOCS = {"a": "the answer is paris", "b": "nothing here", "c": "berlin is big", "d": "rome"}
ANSWERS = {"q1": ["Paris"], "q2": ["Berlin"], "q3": ["Madrid"]}


def test_table_and_ensemble_by_hand():
    bm25 = {"q1": {"b": 3.0, "a": 1.0, "c": 2.0}, "q2": {"c": 5.0, "d": 1.0}, "q3": {"a": 1.0}}
    dense = {"q1": {"a": 0.9, "b": 0.5, "c": 0.1}, "q2": {"d": 0.8, "c": 0.7}, "q3": {"b": 0.1}}
    ce = {"q1": {"b": 4.0, "a": 2.0, "c": 0.0}, "q2": {"c": 1.0, "d": -1.0}, "q3": {"b": 0.0}}
    runs = pipeline_report.pipeline_runs(bm25, dense, ce, keep=3)
    # q1 min-max: BM25 b=1, c=.5, a=0; CE b=1, a=.5, c=0 → b=2, c=.5, a=.5 (ties: BM25 order).
    ens = runs["BM25 + dense → CE"]
    assert ens["q1"] == pytest.approx({"b": 2.0, "c": 0.5, "a": 0.5})
    assert ens["q2"] == pytest.approx({"c": 2.0, "d": 0.0})
    table = pipeline_report.pipeline_table(runs, DOCS, ANSWERS, ks=(1, 2))
    # Top-1: BM25 q1 b ✗, q2 c ✓, q3 a ✗ → 1/3; Top-2: q1 c ✗ → still 1/3.
    assert table["BM25"] == pytest.approx({"Acc@1": 1 / 3, "Acc@2": 1 / 3})
    # dense: q1 a ✓, q2 d ✗ then c ✓ → Top-1 1/3, Top-2 2/3.
    assert table["dense"] == pytest.approx({"Acc@1": 1 / 3, "Acc@2": 2 / 3})
    # dense → CE: q1 b ✗ then a ✓, q2 c ✓ → Top-1 1/3, Top-2 2/3.
    assert table["dense → CE"] == pytest.approx({"Acc@1": 1 / 3, "Acc@2": 2 / 3})
    # ensemble: q1 b ✗, c/a: c first (tie, BM25 order) ✗ ; q2 c ✓ → 1/3 and 1/3.
    assert table["BM25 + dense → CE"] == pytest.approx({"Acc@1": 1 / 3, "Acc@2": 1 / 3})
    md = pipeline_report.render_markdown(table, {"data_name": "toy", "split": "test"})
    assert "| dense → CE | 33.3 | 66.7 |" in md


def _save_ce(path, minilm_path):
    torch.manual_seed(3)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
        max_position_embeddings=128,
        initializer_range=0.5,  # the default 0.02 gives near-equal logits for every pair
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(path)
    tiny_data.copy_minilm_tokenizer(minilm_path, path)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    """A BEIR dir whose query q{i} has answer '{i}' (only in d{i}), a bi- and a cross-encoder."""
    root = tmp_path_factory.mktemp("pipe")
    beir = root / "beir"
    beir.mkdir()
    write_beir(beir)
    rows = [json.loads(x) for x in (beir / "queries.jsonl").read_text().splitlines()]
    for r in rows:
        r["metadata"] = {"answers": [r["_id"][1:]]}
    (beir / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dense = save_tiny_bert(root / "dense", minilm_path, seed=0)
    ce = root / "ce"
    ce.mkdir()
    return beir, dense, ce, _save_ce(ce, minilm_path)


def test_pipeline_end_to_end(tiny, tmp_path):
    beir, dense, ce, model = tiny
    kw = dict(split="dev", rerank_top=40, keep=10, ks=(1, 3, 10), progress=False)
    table, runs = pipeline_report.run_pipeline(beir, dense, ce, tmp_path / "out", **kw)
    assert list(table) == list(pipeline_report.SYSTEMS)
    # The cross-encoder reorders the dense top 40 as transformers scores them.
    tok = transformers.AutoTokenizer.from_pretrained(str(ce))
    docs = {json.loads(x)["_id"]: json.loads(x) for x in (beir / "corpus.jsonl").open()}
    q0 = next(json.loads(x)["text"] for x in (beir / "queries.jsonl").open() if '"q0"' in x)
    got = list(runs["dense → CE"]["q0"])
    texts = [f"{docs[d]['title']} {docs[d]['text']}".strip() for d in got]
    with torch.no_grad():
        s = model(**tok([q0] * len(got), texts, padding=True, return_tensors="pt")).logits[:, 0]
    assert np.all(np.diff(s.numpy()) <= 1e-5)  # descending CE scores
    # The rerank row is not the dense row: the CE moved answers in or out of the top k.
    assert table["dense → CE"] != table["dense"]
    out = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert out["systems"]["dense"]["Acc@3"] == pytest.approx(table["dense"]["Acc@3"])
    texts_by_id = {d: f"{v['title']} {v['text']}".strip() for d, v in docs.items()}
    answers = {f"q{i}": [str(i)] for i in range(0, 60, 3)}
    want = answer_accuracy(runs["BM25"], texts_by_id, answers, (1, 3, 10))
    assert table["BM25"] == pytest.approx(want)
    assert (tmp_path / "out" / "pipeline.png").read_bytes()[:4] == b"\x89PNG"
    assert "| dense → CE |" in (tmp_path / "out" / "report.md").read_text()


def test_pipeline_needs_answers_and_consistent_depths(tiny, tmp_path):
    beir, dense, ce, _ = tiny
    with pytest.raises(InputError, match="rerank_top"):
        pipeline_report.run_pipeline(beir, dense, ce, tmp_path / "x", rerank_top=50, keep=100)
    plain = tmp_path / "plain"
    plain.mkdir()
    write_beir(plain)
    with pytest.raises(InputError, match="answers"):
        pipeline_report.run_pipeline(
            plain, dense, ce, tmp_path / "x", split="dev", rerank_top=10, keep=10, ks=(1,)
        )
    assert not (tmp_path / "x").exists()


def test_pipeline_cli_names_a_missing_flag(tiny):
    beir = tiny[0]
    r = subprocess.run(
        [sys.executable, "-m", "dualenc.report", "--pipeline", "--data", str(beir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip().splitlines()[-1]
        == "error: field 'dense_model': --pipeline needs --dense_model"
    )
