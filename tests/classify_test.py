"""Pair classification: metrics vs scikit-learn, dev threshold, pair readers, CLI parity."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tiny_data
import torch
import transformers
from sklearn import metrics as skm

from dualenc import metrics
from dualenc.data import pairs
from dualenc.inference import classify, rerank
from dualenc.io import InputError

Y_TRUE = [0, 1, 2, 2, 1, 0, 1, 2, 2, 0, 1, 1]
Y_PRED = [0, 2, 2, 1, 1, 0, 0, 2, 2, 1, 1, 2]


def test_classification_metrics_match_sklearn():
    m = metrics.classification_metrics(Y_TRUE, Y_PRED, [0, 1, 2])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    p, r, f, _ = skm.precision_recall_fscore_support(Y_TRUE, Y_PRED, average="macro")
    assert (m["macro"]["precision"], m["macro"]["recall"], m["macro"]["f1"]) == pytest.approx(
        (p, r, f)
    )
    assert m["confusion"] == skm.confusion_matrix(Y_TRUE, Y_PRED, labels=[0, 1, 2]).tolist()
    text = metrics.confusion_text(m["confusion"], ["a", "b", "c"]).splitlines()
    assert text[1].split() == ["a", "2", "1", "0"]  # row = true class a


@pytest.mark.parametrize(
    "y_true,y_pred", [([1, 0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0, 0]), ([0, 0, 1], [0, 0, 0])]
)
def test_binary_metrics_match_sklearn(y_true, y_pred):
    m = metrics.binary_metrics(y_true, y_pred)
    p, r, f, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average="binary", zero_division=0
    )
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))


def test_best_threshold_maximises_dev_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(y * 0.8 + rng.normal(0, 1, 200), 1)  # rounded: many tied scores
    t, f1 = metrics.best_f1_threshold(s, y)
    assert f1 == pytest.approx(skm.f1_score(y, s >= t))
    best = max(skm.f1_score(y, s >= c) for c in np.unique(s))  # every possible cut
    assert f1 == pytest.approx(best)


# ------------------------------------------------------------------------------- readers


def test_reads_mrpc_qqp_nli_layouts(tmp_path):
    mrpc = tmp_path / "m.tsv"
    mrpc.write_text(
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "hi.\tHi, he said.\n'
    )
    p = pairs.read_pairs(mrpc)
    assert (p.text_a, p.text_b, p.labels, p.lines) == (
        ['He said "hi.'],
        ["Hi, he said."],
        ["1"],
        [2],
    )
    qqp = tmp_path / "q.csv"
    qqp.write_text('id,question1,question2,is_duplicate\n0,"a, b?","c\nd?",1\n1,x?,y?,0\n')
    p = pairs.read_pairs(qqp)
    assert (p.text_a, p.text_b, p.labels, p.lines) == (
        ["a, b?", "x?"],
        ["c\nd?", "y?"],
        ["1", "0"],
        [2, 4],  # a record's first line
    )
    nli = tmp_path / "n.jsonl"
    nli.write_text('{"premise": "p", "hypothesis": "h", "label": "Neutral"}\n')
    p = pairs.read_pairs(nli)
    names = ["entailment", "neutral", "contradiction"]
    assert p.columns == ("premise", "hypothesis", "label")
    assert pairs.label_ids(p, names).tolist() == [1]
    custom = tmp_path / "c.tsv"
    custom.write_text("s\tt\ty\nfoo\tbar\t0\n")
    p = pairs.read_pairs(custom, text_a="s", text_b="t", label="y")
    assert (p.text_a, p.text_b, p.labels) == (["foo"], ["bar"], ["0"])


@pytest.mark.parametrize(
    "name,body,match",
    [
        ("a.tsv", "question1\tquestion2\tis_duplicate\nx\ty\n", r"a.tsv:2: expected 3 columns"),
        ("b.jsonl", '{"premise": "p", "label": 0}\n', r"b.jsonl:1 field 'hypothesis'"),
        ("c.csv", "s1,s2,y\na,b,0\n", r"c.csv:1 field '#1 String': column not found"),
        ("d.tsv", "premise\thypothesis\tlabel\n", r"d.tsv: no pairs"),
        ("e.tsv", "premise\thypothesis\tlabel\na\tb\tmaybe\n", r"e.tsv:2 field 'label'.*maybe"),
    ],
)
def test_bad_pair_files_name_file_line_field(tmp_path, name, body, match):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(InputError, match=match):
        p = pairs.read_pairs(path)
        pairs.label_ids(p, ["entailment", "neutral", "contradiction"])


@pytest.mark.data
def test_real_mrpc_test_split(shared_data, tmp_path):
    src = shared_data / "mrpc" / "msr_paraphrase_test.txt"
    head = tmp_path / "mrpc_head.txt"
    with open(src, "rb") as f:
        head.write_bytes(b"".join(f.readline() for _ in range(301)))  # header + 300 pairs
    p = pairs.read_pairs(head)
    assert len(p) == 300 and p.lines[0] == 2 and p.lines[-1] == 301
    assert p.text_a[0].startswith("PCCW's chief operating officer, Mike Butcher")
    assert p.text_b[0].startswith("Current Chief Operating Officer Mike Butcher")
    assert set(p.labels) == {"0", "1"} and p.labels[0] == "1"
    assert all(a.strip() and b.strip() for a, b in zip(p.text_a, p.text_b, strict=True))


# ------------------------------------------------------------------------------- end to end


def _save_tiny(out, minilm_path, id2label):
    """A tiny random BertForSequenceClassification with the MiniLM tokenizer, saved to `out`."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=len(id2label),
        max_position_embeddings=128,
        id2label=dict(enumerate(id2label)),
        label2id={n: i for i, n in enumerate(id2label)},
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # spread the scores (a random head gives logits ~1e-4 apart)
        model.classifier.weight.mul_(300.0)
    model.save_pretrained(out)
    tiny_data.copy_minilm_tokenizer(minilm_path, out)
    return out, model


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory, minilm_path):
    """A 2-label paraphrase classifier."""
    return _save_tiny(tmp_path_factory.mktemp("clf"), minilm_path, ["different", "paraphrase"])


WORDS = "the cat sat on a mat while dogs ran far away from every loud noise in town".split()


def _write_pairs(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i in range(n):
        a, b = (" ".join(rng.choice(WORDS, rng.integers(2, 30))) for _ in range(2))
        lines.append(f"{rng.integers(0, 2)}\t{i}\t{i}\t{a}\t{b}")
    path.write_text("\n".join(lines) + "\n")
    return pairs.read_pairs(path)


def test_cli_matches_transformers_and_sklearn(clf_dir, tmp_path):
    path, model = clf_dir
    test, dev = (
        _write_pairs(tmp_path / "test.tsv", 37, 1),
        _write_pairs(tmp_path / "dev.tsv", 29, 2),
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dualenc.classify", f"--model={path}", f"--output={out}"]
    cmd += [f"--data={tmp_path / 'test.tsv'}", f"--dev={tmp_path / 'dev.tsv'}", "--batch_size=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = transformers.AutoTokenizer.from_pretrained(str(path))

    def ref_logits(p):
        enc = tok(p.text_a, p.text_b, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return model(**enc).logits.numpy()

    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["logits"] for r in preds], ref_logits(test), atol=1e-5)
    m = json.loads((out / "metrics.json").read_text())
    s_dev = np.diff(ref_logits(dev), axis=1)[:, 0]
    y_dev = np.array(dev.labels, int)
    t, f1 = metrics.best_f1_threshold(s_dev, y_dev)
    assert m["threshold"] == pytest.approx(t, abs=1e-5)
    assert m["dev_metrics"]["binary"]["f1"] == pytest.approx(skm.f1_score(y_dev, s_dev >= t))
    y, pred = np.array(test.labels, int), np.array([r["pred"] for r in preds])
    s_test = np.array([r["logits"][1] - r["logits"][0] for r in preds])
    np.testing.assert_array_equal(pred, s_test >= m["threshold"])  # dev threshold, unchanged
    assert (pred != (s_test >= 0)).any()  # ... and it matters here
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    assert [m["test"]["binary"][k] for k in ("precision", "recall", "f1")] == pytest.approx(
        [p, r, f]
    )
    mp, mr, mf, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert [m["test"]["macro"][k] for k in ("precision", "recall", "f1")] == pytest.approx(
        [mp, mr, mf]
    )
    assert m["test"]["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["test"]["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["labels"] == ["different", "paraphrase"]
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| test | 37 |" in (out / "report.md").read_text()


def test_cli_bad_label_exits_2_and_writes_nothing(clf_dir, tmp_path):
    data = tmp_path / "x.jsonl"
    data.write_text('{"premise": "a", "hypothesis": "b", "label": 1}\n' * 2)
    data.write_text(data.read_text() + '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dualenc.classify", f"--model={clf_dir[0]}"]
    cmd += [f"--data={data}", f"--output={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "x.jsonl:3 field 'label'" in proc.stderr
    assert not out.exists()


def test_predict_logits_sharded_equals_single_device(clf_dir):
    rr = rerank.load_reranker(clf_dir[0])
    a, b = ["a cat", "the dog ran far away " * 5, "x"], ["sat", "on a mat", "y z"]
    sharded = classify.predict_logits(rr, a, b, batch_size=8)  # 8-device mesh by default
    single = rerank.score_pairs(rr, a, b, batch_size=2)
    np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_nli_three_labels_argmax_and_string_labels(tmp_path, minilm_path):
    names = ["entailment", "neutral", "contradiction"]
    path, model = _save_tiny(tmp_path / "nli", minilm_path, names)
    rng = np.random.default_rng(3)
    rows = [
        {
            "premise": " ".join(rng.choice(WORDS, 6)),
            "hypothesis": " ".join(rng.choice(WORDS, 4)),
            "label": names[rng.integers(0, 3)].upper(),
        }
        for _ in range(20)
    ]
    data = tmp_path / "nli.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = classify.classify_files(str(path), data, tmp_path / "out", batch_size=4, progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(
        [r["premise"] for r in rows],
        [r["hypothesis"] for r in rows],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        pred = model(**enc).logits.numpy().argmax(-1)
    y = [names.index(r["label"].lower()) for r in rows]
    m = res["test"]
    assert res["threshold"] is None and "binary" not in m and m["labels"] == names
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test"] == m


def test_symmetric_scoring_is_the_mean_of_both_orders(clf_dir):
    """`symmetric`: the mean of the (a, b) and (b, a) logits, the same for either order; the
    random classifier scores the two orders differently, so the option changes the logits."""
    rr = rerank.load_reranker(clf_dir[0])
    a, b = ["a cat sat", "the dog ran far away " * 5, "x"], ["on a mat", "it did", "y z w"]
    ab = classify.predict_logits(rr, a, b, batch_size=4)
    ba = classify.predict_logits(rr, b, a, batch_size=4)
    sym = classify.predict_logits(rr, a, b, batch_size=4, symmetric=True)
    np.testing.assert_allclose(sym, (ab + ba) / 2, atol=1e-6)
    np.testing.assert_allclose(classify.predict_logits(rr, b, a, symmetric=True), sym, atol=1e-6)
    assert np.abs(ab - ba).max() > 1e-3
