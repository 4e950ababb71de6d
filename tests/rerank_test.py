"""Cross-encoder reranking: parity with transformers on a saved dir, and run re-ordering."""

import dataclasses

import jax
import numpy as np
import pytest
import tiny_data
import torch
import transformers
from jax.sharding import Mesh

from dualenc.index.base import top_k_run
from dualenc.inference import rerank
from dualenc.io import InputError
from dualenc.metrics import evaluate_run
from dualenc.models.convert import WeightsError
from dualenc.retrieval.evaluate import default_config, run_evaluation, split_texts
from dualenc.runs import read_trec


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory, minilm_path):
    """A tiny random BertForSequenceClassification (num_labels=1) with the MiniLM tokenizer."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=1,
        max_position_embeddings=128,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    out = tmp_path_factory.mktemp("ce")
    model.save_pretrained(out)
    tiny_data.copy_minilm_tokenizer(minilm_path, out)
    return out, model


QUERIES = ["what is a cat", "how tall is everest", "who wrote hamlet"]
PASSAGES = [
    "Cats are small domesticated carnivores.",
    "Mount Everest is 8,849 metres high, the highest mountain on Earth above sea level.",
    "Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601.",
]


def test_scores_match_transformers(ce_dir):
    path, model = ce_dir
    rr = rerank.load_reranker(path)
    ours = rerank.score_pairs(rr, QUERIES, PASSAGES, batch_size=2)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(QUERIES, PASSAGES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits.numpy()
    assert ours.shape == (3, 1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_rerank_run_orders_by_cross_encoder_and_keeps_the_tail(ce_dir):
    path, _ = ce_dir
    rr = rerank.load_reranker(path)
    passages = {f"d{i}": p for i, p in enumerate(PASSAGES)}
    run = {"q0": {"d0": 3.0, "d1": 2.0, "d2": 1.0}}
    out = rerank.rerank_run(rr, run, {"q0": QUERIES[1]}, passages, top_k=2, progress=False)
    logits = rerank.score_pairs(rr, [QUERIES[1]] * 2, PASSAGES[:2])[:, 0]
    assert out["q0"]["d0"] == pytest.approx(float(logits[0]), abs=1e-6)
    assert out["q0"]["d1"] == pytest.approx(float(logits[1]), abs=1e-6)
    # The doc beyond top_k stays below every reranked doc.
    assert out["q0"]["d2"] < min(out["q0"]["d0"], out["q0"]["d1"])


def test_rerank_run_names_unknown_ids(ce_dir):
    rr = rerank.load_reranker(ce_dir[0])
    with pytest.raises(InputError, match="'dX'"):
        rerank.rerank_run(rr, {"q0": {"dX": 1.0}}, {"q0": "a"}, {"d0": "b"}, progress=False)
    with pytest.raises(InputError, match="'q9'"):
        rerank.rerank_run(rr, {"q9": {"d0": 1.0}}, {"q0": "a"}, {"d0": "b"}, progress=False)


def test_an_encoder_without_a_head_is_not_a_reranker(minilm_path):
    with pytest.raises(WeightsError, match="classifier"):
        rerank.load_reranker(minilm_path)


def test_relevance_of_two_label_models():
    np.testing.assert_allclose(rerank.relevance(np.array([[1.0, 3.0]])), [2.0])
    with pytest.raises(ValueError, match="3"):
        rerank.relevance(np.zeros((1, 3)))


# ---- sharded, bucketed scoring; score cache; errors naming the run file's line ----


def _save_ce(path, minilm_path, seed: int, max_pos: int = 512):
    """A random 1-layer BertForSequenceClassification (num_labels=1) with the MiniLM tokenizer."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
        max_position_embeddings=max_pos,
        initializer_range=0.5,  # the default 0.02 gives near-equal logits for every pair
    )
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(path)
    tiny_data.copy_minilm_tokenizer(minilm_path, path)
    return path


@pytest.fixture(scope="module")
def long_ce(tmp_path_factory, minilm_path):
    return _save_ce(tmp_path_factory.mktemp("ce512"), minilm_path, seed=1)


def _varied_run(n_queries: int, seed: int = 0, max_words: int = 450):
    """Queries with 1..6 docs each; doc lengths from 2 to 450 words (every bucket is used)."""
    rng = np.random.default_rng(seed)
    words = "cat river stone cloud tiger piano garden rocket ocean violin".split()
    queries, passages, run = {}, {}, {}
    for q in range(n_queries):
        queries[f"q{q}"] = " ".join(rng.choice(words, rng.integers(1, 12)))
        run[f"q{q}"] = {}
        for j in range(rng.integers(1, 7)):
            did = f"d{q}_{j}"
            passages[did] = " ".join(rng.choice(words, int(rng.integers(2, max_words))))
            run[f"q{q}"][did] = float(rng.normal())
    return run, queries, passages


def test_200_queries_compile_at_most_one_program_per_bucket(long_ce):
    rr = rerank.load_reranker(long_ce)
    run, queries, passages = _varied_run(200)
    rerank._STEPS.clear()
    out = rerank.rerank_run(rr, run, queries, passages, batch_size=12, progress=False)
    step = rerank.score_step(rr.ce, rerank.scoring_mesh(rr))
    assert rr.buckets() == (64, 128, 192, 256, 384, 512)
    size = step._cache_size()
    assert 1 < size <= len(rr.buckets())
    assert sum(len(d) for d in out.values()) == sum(len(d) for d in run.values())
    # Another query count (one short pair) reuses a compiled program: batches have fixed rows.
    short = ({"q0": {"d0": 1.0}}, {"q0": "cat"}, {"d0": "a river"})
    rerank.rerank_run(rr, *short, batch_size=12, progress=False)
    assert step._cache_size() == size


def test_sharded_scores_equal_single_device_scores(long_ce):
    rr = rerank.load_reranker(long_ce)
    assert rerank.scoring_mesh(rr).size == 8
    run, queries, passages = _varied_run(8, seed=3, max_words=150)
    qs = [queries[q] for q, docs in run.items() for _ in docs]
    ps = [passages[d] for docs in run.values() for d in docs]
    sharded = rerank.score_pairs(rr, qs, ps, batch_size=5)  # 5 rows → 8, one per device
    one = dataclasses.replace(rr, mesh=Mesh(np.array(jax.devices()[:1]), ("data",)))
    single = rerank.score_pairs(one, qs, ps, batch_size=5)
    np.testing.assert_allclose(sharded, single, atol=1e-5)
    # In input order, as transformers scores each pair (the logits differ: order matters).
    model = transformers.BertForSequenceClassification.from_pretrained(str(long_ce)).eval()
    enc = transformers.AutoTokenizer.from_pretrained(str(long_ce))(
        qs, ps, padding=True, truncation=True, max_length=512, return_tensors="pt"
    )
    with torch.no_grad():
        ref = model(**enc).logits.numpy()
    assert ref.std() > 0.1
    np.testing.assert_allclose(sharded, ref, atol=1e-4)


def _counting(monkeypatch):
    calls = []
    real = rerank.score_pairs

    def wrapped(rr, qs, ps, **kw):
        calls.append(len(qs))
        return real(rr, qs, ps, **kw)

    monkeypatch.setattr(rerank, "score_pairs", wrapped)
    return calls


def test_score_cache_skips_scored_pairs_and_is_keyed_by_model(
    long_ce, tmp_path, minilm_path, monkeypatch
):
    rr = rerank.load_reranker(long_ce)
    run, queries, passages = _varied_run(10, seed=5)
    n_pairs = sum(len(d) for d in run.values())
    calls = _counting(monkeypatch)
    kw = dict(top_k=100, progress=False, cache_dir=tmp_path / "cache")
    first = rerank.rerank_run(rr, run, queries, passages, **kw)
    assert calls == [n_pairs]
    again = rerank.rerank_run(rerank.load_reranker(long_ce), run, queries, passages, **kw)
    assert calls == [n_pairs]  # a fresh load of the same model: zero pairs scored
    assert again == first
    # One changed passage text: only its pairs are rescored.
    passages2 = {**passages, "d0_0": passages["d0_0"] + " cloud"}
    rerank.rerank_run(rr, run, queries, passages2, **kw)
    assert calls == [n_pairs, 1]
    # Another model (other weights) does not hit this model's entries.
    other = rerank.load_reranker(_save_ce(tmp_path / "other", minilm_path, seed=2))
    assert other.model_hash() != rr.model_hash()
    rerank.rerank_run(other, run, queries, passages, **kw)
    assert calls == [n_pairs, 1, n_pairs]
    # So does the same weights with another max_length.
    short = rerank.load_reranker(long_ce, max_length=64)
    rerank.rerank_run(short, run, queries, passages, **kw)
    assert calls[-1] == n_pairs
    # Without a cache dir every call scores.
    rerank.rerank_run(rr, run, queries, passages, top_k=100, progress=False)
    assert calls[-1] == n_pairs


def test_unknown_ids_in_a_run_file_name_its_line(ce_dir, tmp_path):
    rr = rerank.load_reranker(ce_dir[0])
    path = tmp_path / "run.trec"
    path.write_text("q0 Q0 d0 1 2.0 t\nq0 Q0 dX 2 1.0 t\nq7 Q0 d0 1 1.0 t\n")
    run = read_trec(path)
    with pytest.raises(InputError, match=rf"{path}:2 field 'doc id'.*'dX'"):
        rerank.rerank_run(rr, run, {"q0": "a", "q7": "b"}, {"d0": "x"}, progress=False, source=path)
    with pytest.raises(InputError, match=rf"{path}:3 field 'query id'.*'q7'"):
        rerank.rerank_run(rr, run, {"q0": "a"}, {"d0": "x", "dX": "y"}, progress=False, source=path)


def _eval_cfg(beir, out, **kw):
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(data=str(beir), split="dev", index="bm25", output=str(out), progress=False)
        cfg.update(**kw)
    return cfg


def test_evaluate_reranks_rerank_top_and_cuts_to_final_top(long_ce, tmp_path):
    (tmp_path / "beir").mkdir()
    beir = tiny_data.write_beir(tmp_path / "beir")
    run_evaluation(_eval_cfg(beir, tmp_path / "bm25", k=30))
    first = read_trec(tmp_path / "bm25" / "run.trec")
    assert max(len(d) for d in first.values()) > 5
    m = run_evaluation(
        _eval_cfg(
            beir, tmp_path / "out", k=5, rerank_model=str(long_ce), rerank_top=30, final_top=2
        )
    )
    got = read_trec(tmp_path / "out" / "run.trec")
    # Expected: BM25's top 30 (not k=5) rescored by the cross-encoder, then the top 2.
    doc_ids, texts, qids, queries, qrels = split_texts(_eval_cfg(beir, ""), "dev")
    docs = dict(zip(doc_ids, texts, strict=True))
    rr = rerank.load_reranker(long_ce)
    full = rerank.rerank_run(rr, first, dict(zip(qids, queries, strict=True)), docs, top_k=30)
    want = top_k_run(full, 2)
    assert {q: list(d) for q, d in got.items()} == {q: list(d) for q, d in want.items()}
    assert any(
        set(want[q]) - set(top_k_run(first, 5)[q]) for q in want
    )  # some final docs came from BM25 ranks 6..30: the first stage went deeper than k
    expected, _ = evaluate_run(want, qrels, ("nDCG@10", "R@100"))
    assert m["nDCG@10"] == pytest.approx(expected["nDCG@10"])
    assert m["R@100"] == pytest.approx(expected["R@100"])


def test_evaluate_rejects_bad_rerank_settings(tmp_path):
    (tmp_path / "beir").mkdir()
    beir = tiny_data.write_beir(tmp_path / "beir")
    for key, value in (("rerank_top", 0), ("final_top", -1), ("rerank_fusion_weight", -0.5)):
        with pytest.raises(InputError, match=f"field '{key}'"):
            run_evaluation(_eval_cfg(beir, tmp_path / "x", **{key: value}))
    assert not (tmp_path / "x").exists()


def test_default_two_label_model_loads_from_its_head(tmp_path, minilm_path):
    """transformers writes no num_labels/id2label for its default 2 labels: the head's shape
    decides, and the logits match."""
    torch.manual_seed(1)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    tiny_data.copy_minilm_tokenizer(minilm_path, tmp_path)
    rr = rerank.load_reranker(tmp_path)
    assert rr.ce.num_labels == 2
    got = rerank.score_pairs(rr, QUERIES, PASSAGES, batch_size=4)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        want = model(**tok(QUERIES, PASSAGES, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
