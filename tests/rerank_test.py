"""Cross-encoder reranking: parity with transformers on a saved dir, and run re-ordering."""

import shutil

import numpy as np
import pytest
import torch
import transformers

from dualenc import rerank
from dualenc.io import InputError
from dualenc.models.convert import WeightsError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


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
    for name in TOKENIZER_FILES:
        if (minilm_path / name).exists():
            shutil.copy(minilm_path / name, out / name)
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
