"""The evaluate / search / encode CLIs: bad input is one line on stderr and exit code 2; empty
documents are evaluated; a separate-tower export (query/ + passage/) is searched with the query
tower for queries and the passage tower for documents; BM25 answers through `Index.search`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_data import save_tiny_bert, write_beir

from dualenc.index import Index
from dualenc.index.bm25 import BM25Index
from dualenc.io import InputError
from dualenc.models import loading, saving
from dualenc.retrieval import engine
from dualenc.retrieval.evaluate import default_config, run_evaluation
from dualenc.retrieval.search import Searcher, build_index

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_path):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, seed=5)


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir"))


@pytest.fixture(scope="module")
def two_towers(tmp_path_factory, tiny_model):
    """A separate-tower export as the trainer writes it: export/query + export/passage."""
    base = loading.load_encoder(tiny_model, pooling="mean", normalize=True)
    rng = np.random.default_rng(0)
    p_params = jax.tree.map(  # another tower: every weight perturbed
        lambda x: np.asarray(x) + rng.normal(0, 0.5 * (np.std(x) + 0.01), np.shape(x)), base.params
    )
    root = tmp_path_factory.mktemp("export")
    saving.save_sentence_transformers(base, root / "query")
    saving.save_sentence_transformers(loading.encoder_from_params(base, p_params), root / "passage")
    return root


def _cfg(beir, model, **kw):
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(data=str(beir), model=str(model), split="dev", k=20, batch_size=8)
        cfg.update(max_length=32, progress=False, **kw)
    return cfg


def test_two_tower_export_evaluates_with_both_towers(two_towers, beir, tmp_path):
    q_enc, p_enc = loading.load_towers(two_towers)
    assert q_enc.weights_hash() != p_enc.weights_hash()
    ds = engine.load_split(str(beir), "dev")
    kw = {"k_values": (10, 20), "batch_size": 8, "max_length": 32}
    want = engine.evaluate_retrieval(q_enc, p_enc, ds, **kw)
    got = run_evaluation(_cfg(beir, two_towers, output=str(tmp_path / "out")))
    for m in ("nDCG@10", "RR@10", "R@10"):
        assert got[m] == pytest.approx(want[m], abs=1e-9), m
    # Using one tower for both sides gives other figures, so the test sees which tower is used.
    same = engine.evaluate_retrieval(p_enc, p_enc, ds, **kw)
    assert any(abs(same[m] - want[m]) > 1e-6 for m in ("nDCG@10", "RR@10"))
    with pytest.raises(InputError, match="separate-tower export"):
        loading.load_encoder(two_towers)


def test_two_tower_search(two_towers, beir, tmp_path):
    build_index("exact", str(beir / "corpus.jsonl"), str(tmp_path / "ix"), model=str(two_towers))
    s = Searcher(str(tmp_path / "ix"))
    hits = s.search("apple river", k=3)
    q_enc, p_enc = loading.load_towers(two_towers)
    from dualenc.data.beir import load_corpus
    from dualenc.inference.encode import beir_doc_text, encode_texts

    corpus = load_corpus(beir / "corpus.jsonl", allow_empty=True)
    q = encode_texts(q_enc, ["apple river"], progress=False)[0]
    d = encode_texts(p_enc, [beir_doc_text(corpus[hits[0][0]])], progress=False)[0]
    assert hits[0][1] == pytest.approx(float(q @ d), abs=1e-5)


def test_empty_documents_are_evaluated_and_never_retrieved_by_bm25(beir, tiny_model, tmp_path):
    dense = run_evaluation(_cfg(beir, tiny_model, index="exact", output=str(tmp_path / "d")))
    bm25 = run_evaluation(_cfg(beir, "", index="bm25", output=str(tmp_path / "b")))
    assert dense["num_queries"] == bm25["num_queries"] == 20
    run = (tmp_path / "d" / "run.trec").read_text()
    assert " empty " in run  # the dense run ranks it (it is a real, if useless, document)
    assert " empty " not in (tmp_path / "b" / "run.trec").read_text()


def test_bm25_behind_the_index_interface():
    idx = BM25Index.build(["red apple pie", "", "green river stone"])
    assert isinstance(idx, Index) and idx.inputs == "text"
    scores, rows = idx.search(["river", "nothing matches"], 3)
    assert rows[0, 0] == 2 and scores[0, 0] > 0
    assert (rows[1] == -1).all() and 1 not in rows  # the empty document is never retrieved
    with pytest.raises(TypeError):
        idx.search("river", 3)


def _cli(module, *args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_input_errors_are_one_line_and_exit_2(tmp_path, beir, tiny_model):
    bad = tmp_path / "bad"
    shutil.copytree(beir, bad)
    with open(bad / "corpus.jsonl", "a") as f:
        f.write("{broken\n")
    cases = [
        ("dualenc.evaluate", ["--data", str(bad), "--index", "bm25", "--split", "dev"]),
        ("dualenc.evaluate", ["--data", str(tmp_path / "nope"), "--model", str(tiny_model)]),
        ("dualenc.search", ["--index", str(tmp_path / "no_index"), "--query", "x"]),
        ("dualenc.search", ["--build", "--kind", "bm25", "--corpus", str(bad / "corpus.jsonl")]),
    ]
    wants = [
        f"{bad / 'corpus.jsonl'}:62: malformed JSON",
        "data directory not found",
        "not an index directory",
        "--index DIR is required",
    ]
    for (module, args), want in zip(cases, wants, strict=True):
        r = _cli(module, *args)
        assert r.returncode == 2, (module, args, r.stderr[-2000:])
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and want in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr


def test_evaluate_writes_json_once(beir, tiny_model, tmp_path):
    out = tmp_path / "out"
    r = _cli(
        "dualenc.evaluate",
        *("--data", str(beir), "--model", str(tiny_model), "--split", "dev"),
        *("--output", str(out), "--max_length", "32", "--progress=false"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == json.loads((out / "metrics.json").read_text())
    names = sorted(p.name for p in out.iterdir())
    assert names == ["curve.json", "info.json", "metrics.json", "report.md", "run.trec"]
