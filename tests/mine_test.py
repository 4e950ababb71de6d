"""Hard-negative mining: positives never negatives, margin / answer / window filters, outputs that
the training readers load back (with teacher scores), dense and cross-encoder scoring, the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualenc.data import mining, negatives
from dualenc.data.beir import load_beir
from dualenc.data.dpr import load_dpr
from dualenc.data.examples import TrainExample
from dualenc.data.nq_toy import answer_pattern
from dualenc.data.pipeline import TrainPipeline
from dualenc.data.st_format import load_st_jsonl
from dualenc.io import InputError
from dualenc.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
TOK_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

# q0's second positive (P_B) is BM25's top hit; N_CLOSE is P_B with a word changed (its BM25
# score is 96.5 % of P_B's); N_ANS holds q0's answer; the rest are filler.
P_A = "cats purr when they are happy"
P_B = "cats cats cats purr purr happy cats"
N_CLOSE = "cats cats cats purr purr happy dogs"
N_ANS = "the purring of cats is a sign they feel safe and happy"
FILLER = [
    "cats sleep most of the day",
    "dogs bark at cats",
    "a happy dog wags its tail",
    "birds sing in the morning",
    "the weather is cold in winter",
    "trains run on rails",
]


def _examples():
    return [
        TrainExample("q0", "why do cats purr happy", [P_A, P_B], [N_CLOSE, N_ANS], ["sign they"]),
        TrainExample("q1", "dogs bark", ["dogs bark loudly at night"], FILLER[:3]),
        TrainExample("q2", "trains and rails", ["trains run fast"], FILLER[3:]),
    ]


def _bm25(data, **kw):
    cfg = mining.MineConfig(method="bm25", num_negatives=10, **kw)
    mined, summary = negatives.run_mining(data, cfg, progress=False)
    return {m.query.qid: m for m in mined}, summary


def _neg_texts(data, m):
    return [data.texts[r] for r in m.neg_rows]


def test_positives_excluded_even_when_bm25_ranks_one_first():
    data = mining.data_from_examples(_examples())
    top = mining.BM25Scorer(data.texts).search([data.queries[0].text], 3)[0]
    assert data.texts[top[0]] == P_B  # the second positive is the top hit
    by_q, summary = _bm25(data, answer_filter=False)
    negs = _neg_texts(data, by_q["q0"])
    assert P_A not in negs and P_B not in negs and N_CLOSE in negs
    assert summary["dropped_positive"] >= 2


def test_bm25_scores_match_the_ranking():
    data = mining.data_from_examples(_examples())
    bm = mining.BM25Scorer(data.texts)
    s, rows = bm.index.search_texts([q.text for q in data.queries], 5)
    for i, q in enumerate(data.queries):
        ours = bm.score([q.text], [[r for r in rows[i] if r >= 0]])[0]
        np.testing.assert_allclose(ours, s[i][rows[i] >= 0], rtol=1e-5)


def test_relative_score_rule_drops_near_positive_candidate():
    data = mining.data_from_examples(_examples())
    by_q, _ = _bm25(data, answer_filter=False)
    m = by_q["q0"]
    close = m.neg_scores[_neg_texts(data, m).index(N_CLOSE)]
    assert close >= 0.95 * max(m.pos_scores)
    by_q, summary = _bm25(data, answer_filter=False, max_relative_score=0.95)
    assert N_CLOSE not in _neg_texts(data, by_q["q0"])
    assert summary["dropped_max_relative_score"] >= 1
    for m in by_q.values():  # every kept negative is below 95 % of its positive
        assert all(s < 0.95 * max(m.pos_scores) for s in m.neg_scores)


def test_answer_filter_drops_passage_containing_answer():
    data = mining.data_from_examples(_examples())
    by_q, _ = _bm25(data, answer_filter=False)
    assert N_ANS in _neg_texts(data, by_q["q0"])
    by_q, summary = _bm25(data)
    assert N_ANS not in _neg_texts(data, by_q["q0"]) and summary["dropped_answer"] == 1


def test_range_window_honoured():
    data = mining.data_from_examples(_examples())
    bm = mining.BM25Scorer(data.texts)
    rows = bm.search([q.text for q in data.queries], 50)
    by_q, _ = _bm25(data, range_min=1, range_max=3, answer_filter=False)
    assert by_q
    for i, q in enumerate(data.queries):
        window = set(int(r) for r in rows[i][1:3])
        if q.qid in by_q:
            assert set(by_q[q.qid].neg_rows) <= window
    assert int(rows[0][0]) not in by_q["q0"].neg_rows


def test_random_sampling_is_seeded_subset():
    data = mining.data_from_examples(_examples())
    full, _ = _bm25(data, answer_filter=False)
    runs = []
    for seed in (0, 0, 1):
        cfg = mining.MineConfig(num_negatives=2, sampling="random", seed=seed, answer_filter=False)
        mined, summary = negatives.run_mining(data, cfg, progress=False)
        runs.append({m.query.qid: m.neg_rows for m in mined})
        assert summary["dropped_not_sampled"] > 0
    assert runs[0] == runs[1]
    for qid, rows in runs[0].items():
        assert len(rows) <= 2 and set(rows) <= set(full[qid].neg_rows)


def test_st_output_round_trips_with_teacher_scores(tmp_path, minilm_path):
    data = mining.data_from_examples(_examples())
    by_q, _ = _bm25(data, answer_filter=False)
    out = tmp_path / "mined.jsonl"
    negatives.write_output(
        out, negatives.to_records(data, list(by_q.values()), "st_jsonl"), "st_jsonl"
    )
    back = {ex.qid: ex for ex in load_st_jsonl(out)}
    m = by_q["q0"]
    assert back["q0"].negatives == _neg_texts(data, m)
    close = m.neg_scores[_neg_texts(data, m).index(N_CLOSE)]
    assert back["q0"].scores[N_CLOSE] == pytest.approx(close)
    assert back["q0"].scores[P_A] == pytest.approx(m.pos_scores[0])
    pipe = TrainPipeline(
        path=out,
        format="st_jsonl",
        tokenizer=load_tokenizer(minilm_path),
        global_batch_size=2,
        num_negatives=1,
        num_threads=1,
    )
    batch = next(pipe)
    assert batch["teacher_scores"].shape == (2, 2)
    recs = [pipe.data.examples[int(i)] for i in pipe.global_indices(0, 0)]
    for rec, row, pids in zip(recs, batch["teacher_scores"], batch["p_ids"], strict=True):
        for s, pid in zip(row, pids, strict=True):
            assert s == pytest.approx(back[rec.qid].scores[pipe.texts[int(pid)]])


def test_dpr_output_round_trips(tmp_path):
    data = mining.data_from_examples(_examples())
    by_q, _ = _bm25(data)
    out = tmp_path / "mined.json"
    negatives.write_output(out, negatives.to_records(data, list(by_q.values()), "dpr"), "dpr")
    back = {ex.qid: ex for ex in load_dpr(out)}
    assert back["q0"].negatives == _neg_texts(data, by_q["q0"])
    assert back["q0"].answers == ["sign they"] and back["q0"].positives == [P_A, P_B]
    obj = json.loads(out.read_text())[0]
    assert [c["score"] for c in obj["hard_negative_ctxs"]] == by_q["q0"].neg_scores


def _beir(tmp_path):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    docs = [("d0", "Cats", P_A), ("d1", "", P_B), ("d2", "", ""), ("d3", "Pets", N_CLOSE)]
    docs += [(f"f{i}", "", t) for i, t in enumerate(FILLER)]
    with open(d / "corpus.jsonl", "w") as f:
        for i, title, text in docs:
            f.write(json.dumps({"_id": i, "title": title, "text": text}) + "\n")
    with open(d / "queries.jsonl", "w") as f:
        f.write(json.dumps({"_id": "q0", "text": "why do cats purr happy"}) + "\n")
        f.write(json.dumps({"_id": "q1", "text": "dogs bark"}) + "\n")
    (d / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td1\t1\nq1\tf1\t1\n"
    )
    return d


def test_beir_pool_with_empty_doc(tmp_path):
    data = negatives.load_data(_beir(tmp_path), "auto", "train")
    assert len(data.texts) == 10 and "" in data.texts
    by_q, _ = _bm25(data)
    negs = _neg_texts(data, by_q["q0"])
    assert P_A not in negs and P_B not in negs and "" not in negs and f"Pets {N_CLOSE}" in negs


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, minilm_path):
    """A tiny random BertModel (dense) and BertForSequenceClassification (cross-encoder)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    out = []
    for name, cls, extra in (
        ("enc", BertModel, {}),
        ("ce", BertForSequenceClassification, {"num_labels": 1}),
    ):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        cls(BertConfig(**cfg, **extra)).eval().save_pretrained(str(path))
        for f in TOK_FILES:
            shutil.copyfile(minilm_path / f, path / f)
        out.append(path)
    return out


def test_dense_and_both_methods(tiny_dirs, tmp_path):
    from dualenc.models.loading import load_encoder

    enc_dir, _ = tiny_dirs
    data = mining.data_from_examples(_examples())
    enc = load_encoder(enc_dir)
    from dualenc.inference.encode import encode_texts

    q = encode_texts(enc, [x.text for x in data.queries], progress=False)
    p = encode_texts(enc, data.texts, progress=False)
    q, p = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, p))
    for method in ("dense", "both"):
        cfg = mining.MineConfig(method=method, num_negatives=3, answer_filter=False)
        mined, summary = negatives.run_mining(data, cfg, model=str(enc_dir), progress=False)
        assert summary["negatives"] > 0
        for m in mined:
            i = data.queries.index(m.query)
            assert not set(m.neg_rows) & set(m.query.pos_rows)
            np.testing.assert_allclose(m.neg_scores, p[m.neg_rows] @ q[i], atol=1e-5)
            np.testing.assert_allclose(m.pos_scores, p[m.query.pos_rows] @ q[i], atol=1e-5)
            if method == "dense":  # top sampling keeps the dense ranking order
                assert m.neg_scores == sorted(m.neg_scores, reverse=True)
    # dense search ranks the whole pool, so the empty BEIR document is retrieved, then dropped
    data = negatives.load_data(_beir(tmp_path), "beir", "train")
    cfg = mining.MineConfig(method="dense", num_negatives=3)
    mined, summary = negatives.run_mining(data, cfg, model=str(enc_dir), progress=False)
    assert summary["dropped_empty"] == 2 and summary["dropped_positive"] == 3
    assert all("" not in _neg_texts(data, m) for m in mined)
    with pytest.raises(InputError, match="needs --model"):
        negatives.run_mining(data, mining.MineConfig(method="dense"), progress=False)


def test_cross_encoder_rescoring(tiny_dirs):
    from dualenc.inference import rerank

    _, ce_dir = tiny_dirs
    data = mining.data_from_examples(_examples())
    cfg = mining.MineConfig(num_negatives=10, answer_filter=False)
    mined, _ = negatives.run_mining(data, cfg, cross_encoder=str(ce_dir), progress=False)
    rr = rerank.load_reranker(ce_dir)
    for m in mined:
        texts = [data.texts[r] for r in m.neg_rows]
        ref = rerank.relevance(rerank.score_pairs(rr, [m.query.text] * len(texts), texts))
        np.testing.assert_allclose(m.neg_scores, ref, atol=1e-4)
    # a cap between the CE scores drops exactly the candidates above it
    scores = sorted(s for m in mined for s in m.neg_scores)
    cap = (scores[0] + scores[-1]) / 2
    cfg = mining.MineConfig(num_negatives=10, answer_filter=False, max_score=cap)
    capped, summary = negatives.run_mining(data, cfg, cross_encoder=str(ce_dir), progress=False)
    assert all(s <= cap for m in capped for s in m.neg_scores)
    assert summary["dropped_max_score"] == sum(s > cap for s in scores)


def _cli(*args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "dualenc.mine", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end_and_bad_input(tmp_path):
    good = tmp_path / "train.jsonl"
    lines = [
        {"query": e.query, "positive": e.positives, "negative": e.negatives} for e in _examples()
    ]
    good.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    r = _cli(
        "--data",
        str(good),
        "--output",
        str(out),
        "--max_relative_score",
        "0.95",
        "--progress=false",
    )
    assert r.returncode == 0, r.stderr
    assert "dropped_max_relative_score" in r.stdout and len(load_st_jsonl(out)) >= 1
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q", "positive_ctxs": [{"title": "", "text": ""}]}]')
    r = _cli("--data", str(bad), "--output", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:0" in lines[0] and "positive_ctxs[0].text" in lines[0]
    assert not (tmp_path / "x.jsonl").exists()
    r = _cli("--data", str(good), "--output", str(tmp_path / "y.jsonl"), "--method", "dense")
    assert r.returncode == 2 and "--model" in r.stderr.strip().splitlines()[-1]


def test_nq_toy_never_mines_an_answer_or_a_positive():
    examples = load_dpr(REPO / "data" / "nq-toy" / "train.json")[:600]
    data = mining.data_from_examples(examples)
    cfg = mining.MineConfig(num_negatives=5, range_max=30)
    mined, summary = negatives.run_mining(data, cfg, progress=False)
    assert summary["dropped_answer"] > 0 and summary["dropped_positive"] > 0
    assert len(mined) > 500
    for m in mined:
        ex = examples[data.queries.index(m.query)]
        pattern = answer_pattern(ex.answers)
        for text in _neg_texts(data, m):
            assert text not in ex.positives and not pattern.search(text)


class _Fixed:
    """A retriever stub returning fixed rankings (rows per query)."""

    def __init__(self, rows):
        self.rows = np.array(rows)

    def search(self, *args):
        return self.rows[:, : args[-1]]


def test_both_interleaves_dense_first_without_repeats():
    data = mining.data_from_examples(_examples())
    dense, bm25 = _Fixed([[5, 6, 7, 8]] * 3), _Fixed([[0, 9, 7, 10]] * 3)
    cfg = mining.MineConfig(method="both", range_min=1, range_max=4)
    rows = mining.candidate_rows(data, cfg, bm25=bm25, dense=dense)
    assert rows[0] == [6, 9, 7, 8, 10]  # 7 is in both windows: once


def test_config_negatives_mine_the_window_of_each_retriever(minilm_path, tmp_path):
    """The trainers' in-run mining (`data.mine_negatives='dense'|'both'`) returns, per query, doc
    ids of ranks [skip, skip + depth) of the dense (and BM25) ranking, interleaved dense first,
    judged positives and empty docs dropped: re-derived here from the embeddings and BM25."""
    import ml_collections

    from dualenc.inference.encode import encode_texts
    from dualenc.models.loading import load_encoder

    enc_dir = minilm_path  # real weights: distinct scores (a tiny random tower ties them all)
    root = _beir(tmp_path)
    data = negatives.load_data(root, "beir", "train")
    enc = load_encoder(enc_dir)
    q = encode_texts(enc, [x.text for x in data.queries], progress=False)
    p = encode_texts(enc, data.texts, progress=False)
    q, p = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, p))
    bm25 = mining.BM25Scorer(data.texts).search([x.text for x in data.queries], len(data.texts))
    skip, depth = 2, 3
    d = ml_collections.ConfigDict(
        {
            "train": {"path": str(root), "split": "train", "format": "beir"},
            "mine_negatives": "",
            "mine_depth": depth,
            "mine_skip": skip,
            "mine_model": str(enc_dir),
            "mine_max_relative_score": 0.0,
        }
    )
    ds = load_beir(root, "train", allow_empty_docs=True)
    for method in ("dense", "both"):
        d.mine_negatives = method
        got = negatives.config_negatives(ds, d)
        for i, mq in enumerate(data.queries):
            dense_w = [int(r) for r in np.argsort(-(p @ q[i]), kind="stable")[skip : skip + depth]]
            bm25_w = [int(r) for r in bm25[i][skip : skip + depth] if r >= 0]
            order = dense_w if method == "dense" else []
            for j in range(depth if method == "both" else 0):
                order += [w[j] for w in (dense_w, bm25_w) if j < len(w)]
            keep = [r for r in dict.fromkeys(order) if r not in mq.excluded and data.texts[r]]
            assert got.get(mq.qid, []) == [data.ids[r] for r in keep[:depth]], (method, mq.qid)
    assert got["q0"] and not {"d0", "d1"} & set(got["q0"])  # q0's judged positives
    d.mine_negatives = "bm25"
    assert negatives.config_negatives(ds, d) == negatives.bm25_negatives(ds, depth, skip)
    d.mine_negatives = ""
    assert negatives.config_negatives(ds, d) is None
