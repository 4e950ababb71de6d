"""Cross-encoder training (task='cross'): losses, the loop, early stopping, resume, export parity
with transformers / sentence-transformers, DeBERTa-v3, bad input, and an MRPC CI run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from dualenc.cross import data as cross_data
from dualenc.cross import evaluation as cross_evaluation
from dualenc.cross import losses as cross_losses
from dualenc.cross import model as cross_model
from dualenc.cross import task as cross_task
from dualenc.inference import rerank
from dualenc.io import InputError, data_dir
from dualenc.training import config as config_lib
from dualenc.training import loop
from dualenc.training.config import ConfigError
from tests import tiny_data
from tests.cross_fixtures import pair_config, rerank_config

REPO = Path(__file__).resolve().parents[1]


def _cfg(name, **kw):
    c = config_lib.base_config()
    c.cross.loss = name
    for k, v in kw.items():
        c.cross[k] = v
    return c.cross


# ----------------------------------------------------------------------------- losses


def test_bce_hand_values():
    z = jnp.array([[[2.0], [-1.0], [0.5]]])  # one group: positive first
    loss, m = cross_losses.make_cross_loss(_cfg("bce"))(z, {})
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731 - softplus
    want = (sp(-2.0) + sp(-1.0) + sp(0.5)) / 3
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(2 / 3)
    # Single labelled pairs: labels (B,), G = 1.
    loss, _ = cross_losses.make_cross_loss(_cfg("bce"))(
        jnp.array([[[1.0]], [[3.0]]]), {"labels": jnp.array([0, 1])}
    )
    assert float(loss) == pytest.approx((sp(1.0) + sp(-3.0)) / 2, rel=1e-6)


def test_listwise_hand_values():
    z = jnp.array([[[1.0], [2.0], [0.0]], [[3.0], [0.0], [0.0]]])
    loss, m = cross_losses.make_cross_loss(_cfg("listwise"))(z, {})
    lse1, lse2 = np.log(np.exp(1) + np.exp(2) + 1), np.log(np.exp(3) + 2)
    assert float(loss) == pytest.approx(((lse1 - 1) + (lse2 - 3)) / 2, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(0.5)


def test_pair_ce_hand_values_and_class_weights():
    z = jnp.array([[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    y = jnp.array([0, 0, 1])
    ce = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log(2.0)]
    loss, _ = cross_losses.make_cross_loss(_cfg("pair_ce"))(z, {"labels": y})
    assert float(loss) == pytest.approx(np.mean(ce), rel=1e-6)
    w = (1.0, 3.0)
    loss, _ = cross_losses.make_cross_loss(_cfg("pair_ce", class_weights=w))(z, {"labels": y})
    assert float(loss) == pytest.approx((ce[0] + ce[1] + 3 * ce[2]) / 5, rel=1e-6)
    # As torch's weighted CrossEntropyLoss.
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(np.asarray(z[:, 0])),
        torch.tensor(np.asarray(y)).long(),
        weight=torch.tensor(w),
    )
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "listwise", "pair_ce"])
def test_loss_gradients_push_the_right_way(name):
    """A gradient step lowers the loss and raises the positive's (label's) logit."""
    fn = cross_losses.make_cross_loss(_cfg(name))
    if name == "pair_ce":
        z, batch, pos = jnp.zeros((2, 1, 3)), {"labels": jnp.array([2, 1])}, (0, 0, 2)
    else:
        z, batch, pos = jnp.zeros((2, 4, 1)), {}, (0, 0, 0)
    g = jax.grad(lambda v: fn(v, batch)[0])(z)
    assert float(g[pos]) < 0  # descending raises the positive logit
    assert np.isfinite(np.asarray(g)).all()
    assert float(fn(z - 0.5 * g, batch)[0]) < float(fn(z, batch)[0])


# ----------------------------------------------------------------------------- the loop + export


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, minilm_path):
    tmp = tmp_path_factory.mktemp("pairs")
    c = pair_config(tmp, minilm_path)
    return c, loop.train_and_evaluate(c, tmp / "w"), tmp / "w"


def test_pair_classification_trains_and_exports(pair_run):
    c, r, w = pair_run
    losses = [row["loss"] for row in r["log"]]
    assert losses[-1] < losses[0] - 0.1, losses
    assert r["test"]["accuracy"] >= 0.75  # the bag-of-words rule is learnt
    m = json.loads((w / "metrics.json").read_text())
    assert m["best_step"] == max(m["dev_history"], key=lambda h: h["metric"])["step"]
    assert len(m["test"]["confusion"]) == 2 and "threshold" in m["test"]
    cfg = json.loads((w / "export" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["num_labels"] == 2 and cfg["id2label"] == {"0": "0", "1": "1"}


def _pairs():
    a = ["apple river stone", "tiger piano garden", "cloud ocean castle"]
    b = ["apple stone river", "rocket silver forest", "violin desert candle mirror"]
    return a, b


def test_export_matches_transformers_and_sentence_transformers(pair_run):
    _, _, w = pair_run
    a, b = _pairs()
    ours = rerank.score_pairs(rerank.load_reranker(w / "export"), a, b)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(w / "export"))
    tok = transformers.AutoTokenizer.from_pretrained(str(w / "export"))
    with torch.no_grad():
        ref = model.eval()(**tok(a, b, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    from sentence_transformers import CrossEncoder

    st = CrossEncoder(str(w / "export"), device="cpu")
    got = st.predict(list(zip(a, b, strict=True)), activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(np.asarray(got), ours, atol=1e-5)


def test_export_is_the_best_step(pair_run):
    _, r, w = pair_run
    best = load_file(str(w / "best" / "model.safetensors"))
    exp = load_file(str(w / "export" / "model.safetensors"))
    assert json.loads((w / "best" / "dualenc_cross.json").read_text())["step"] == r["best_step"]
    for k in best:
        np.testing.assert_array_equal(best[k], exp[k])


def test_early_stopping_record():
    early = loop.Early()
    for step, v in zip(range(2, 14, 2), [0.5, 0.8, 0.7, 0.8, 0.6, 0.9], strict=True):
        early.update(step, v, 3)
        if early.stopped:
            break
    assert early.best_step == 4 and early.stopped and step == 10  # a tie is no gain


def test_early_stopping_in_the_loop(tmp_path, minilm_path, monkeypatch):
    """A forced dev-metric sequence: the best step is kept, training stops after `patience`."""
    seq = iter([0.5, 0.8, 0.7, 0.8, 0.6, 0.9, 0.95])
    monkeypatch.setattr(cross_evaluation, "metric_value", lambda m, name: next(seq))
    saved = []
    monkeypatch.setattr(cross_task, "save_best", lambda *a: saved.append(a[3]))  # (.., step, ..)
    monkeypatch.setattr(cross_model, "load_params", lambda m, d: None)
    monkeypatch.setattr(cross_evaluation.PairEval, "test_metrics", lambda *a: {})
    monkeypatch.setattr(cross_evaluation.PairEval, "dev_metrics", lambda *a: {})
    over = {"eval.every_steps": 2, "cross.patience": 3, "train.num_steps": 20}
    c = pair_config(tmp_path, minilm_path, **over, **{"export.enabled": False})
    r = loop.train_and_evaluate(c, tmp_path / "w")
    assert r["step"] == 10 and r["early_stopped"] and r["best_step"] == 4
    assert [h["step"] for h in r["dev_history"]] == [2, 4, 6, 8, 10]
    assert saved == [2, 4]


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, minilm_path):
    over = {"checkpoint.every_steps": 4, "eval.every_steps": 4, "train.num_steps": 12}
    c = pair_config(tmp_path, minilm_path, **over)
    full = loop.train_and_evaluate(c, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # A kill after step 8's checkpoint: step 12 never happened (its best/ may have, replayed).
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "12")
    shutil.rmtree(tmp_path / "b" / "export")
    (tmp_path / "b" / "metrics.json").unlink()
    resumed = loop.train_and_evaluate(c, tmp_path / "b")
    assert resumed["dev_history"] == full["dev_history"]
    assert resumed["best_step"] == full["best_step"]
    assert [row["step"] for row in resumed["log"]] == [12]  # only steps 9..12 ran again
    a = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)


# ----------------------------------------------------------------------------- DeBERTa-v3


def test_deberta_v3_pair_classifier_trains_and_exports(tmp_path, minilm_path):
    """A random tiny DeBERTa-v3 encoder dir (saved by transformers) + a fresh head: a few steps,
    then the export loads in transformers with the same logits."""
    torch.manual_seed(0)
    cfg = transformers.DebertaV2Config(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
    )
    enc = tmp_path / "deberta"
    transformers.DebertaV2Model(cfg).save_pretrained(str(enc))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_path / name, enc / name)
    over = {"model.init_random": False, "train.num_steps": 4, "eval.every_steps": -1}
    c = pair_config(tmp_path, enc, **over, **{"checkpoint.every_steps": 0})
    r = loop.train_and_evaluate(c, tmp_path / "w")
    assert r["step"] == 4 and np.isfinite(r["log"][-1]["loss"])
    out = tmp_path / "w" / "export"
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "DebertaV2ForSequenceClassification"
    ]
    a, b = _pairs()
    ours = rerank.score_pairs(rerank.load_reranker(out), a, b)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        ref = model(**tok(a, b, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path, minilm_path, text: str, which: str = "train", **over):
    c = pair_config(tmp_path, minilm_path, **over)
    path = tmp_path / f"{which}.tsv"
    path.write_text(text)
    return c


@pytest.mark.parametrize(
    "text,where,field",
    [
        ("sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t7\n", ":3", "label"),
        ("sentence1\tsentence2\tlabel\na\tb\t1\nc\td\n", ":3", None),
        ("first\tsecond\tgold\na\tb\t1\n", ":1", "sentence1"),
    ],
    ids=["label-outside-set", "missing-field", "columns-not-found"],
)
def test_bad_pair_files_name_file_line_field_and_write_nothing(
    tmp_path, minilm_path, text, where, field
):
    c = _bad(tmp_path, minilm_path, text)
    with pytest.raises(InputError) as e:
        loop.train_and_evaluate(c, tmp_path / "w")
    assert f"train.tsv{where}" in str(e.value)
    if field:
        assert field in str(e.value)
    assert not (tmp_path / "w").exists()  # nothing half-written


def test_empty_dev_set_and_config_errors(tmp_path, minilm_path):
    c = _bad(tmp_path, minilm_path, "sentence1\tsentence2\tlabel\n", which="dev")
    with pytest.raises(InputError, match="dev.tsv"):
        loop.train_and_evaluate(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    for over, key in [
        ({"cross.loss": "hinge"}, "cross.loss"),
        ({"cross.num_labels": 1}, "cross.num_labels"),
        ({"data.dev.path": ""}, "data.dev.path"),
        ({"cross.eval_metric": "nDCG@10"}, "cross.eval_metric"),
        ({"cross.class_weights": (1.0,)}, "cross.class_weights"),
        ({"cross.fusion": "sum"}, "cross.fusion"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            loop.train_and_evaluate(pair_config(tmp_path, minilm_path, **over), tmp_path / "x")


def test_cli_exits_2_on_bad_input(tmp_path, minilm_path):
    c = pair_config(tmp_path, minilm_path)
    (tmp_path / "train.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\tmaybe\n")
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import ml_collections\n"
        f"def get_config():\n    return ml_collections.ConfigDict({c.to_dict()!r})\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "dualenc.train", f"--config={cfg}", f"--workdir={tmp_path / 'w'}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "train.tsv:2" in p.stderr and "label" in p.stderr
    assert not (tmp_path / "w" / "metrics.json").exists()


# ----------------------------------------------------------------------------- MRPC (real data)


@pytest.mark.data
def test_mrpc_ci_sized_run_beats_the_majority_class(tmp_path):
    """MiniLM + fresh head, 640 train pairs, 2 epochs, length 64: test accuracy and macro F1
    clearly above predicting the majority class (accuracy 0.665, macro F1 0.40)."""
    root = data_dir() / "mrpc"
    train = (root / "glue" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(train[:641]) + "\n", encoding="utf-8")
    test = (root / "msr_paraphrase_test.txt").read_text(encoding="utf-8-sig").splitlines()
    (tmp_path / "test.tsv").write_text("\n".join(test[:401]) + "\n", encoding="utf-8")
    c = _mrpc_config(tmp_path, root)
    r = loop.train_and_evaluate(c, tmp_path / "w")
    t = r["test"]["argmax"]  # the dev-F1 threshold leans to 'equivalent'; argmax is fairer
    majority = max(np.bincount(np.asarray([int(x.split("\t")[0]) for x in test[1:401]])))
    assert t["accuracy"] > majority / 400 + 0.03, t  # the majority class: 0.655 (seen: 0.70)
    assert t["macro"]["f1"] > 0.5, t  # the majority class: 0.40 (seen: 0.57)


def _mrpc_config(tmp_path, root):
    sys.path.insert(0, str(REPO))
    import configs.cross_mrpc as mrpc  # noqa: PLC0415

    c = mrpc.get_config()
    c.unlock()
    c.data.train.path = str(tmp_path / "train.tsv")
    c.data.dev.path = str(root / "glue" / "dev.tsv")
    c.data.test.path = str(tmp_path / "test.tsv")
    c.cross.max_length = 64
    c.cross.pad_to_max_length = True
    c.train.num_epochs = 2.0
    c.train.warmup_steps = 4
    c.train.learning_rate = 1e-4
    c.eval.every_steps = 40
    c.checkpoint.every_steps = 0
    c.export.enabled = False
    c.lock()
    return c


# ----------------------------------------------------------------------------- reranking


def test_listwise_reranker_on_beir_with_held_out_dev(tmp_path, minilm_path, monkeypatch):
    (tmp_path / "beir").mkdir()
    beir = tiny_data.write_beir(tmp_path / "beir")
    over = {"cross.fusion": "zscore", "data.mine_negatives": "both"}  # BM25 + dense, in the run
    c = rerank_config(tmp_path, minilm_path, beir, **over, **{"data.mine_model": str(minilm_path)})
    mined = []
    real = cross_data.negatives.config_negatives
    monkeypatch.setattr(
        cross_data.negatives,
        "config_negatives",
        lambda ds, d: mined.append(real(ds, d)) or mined[-1],
    )
    r = loop.train_and_evaluate(c, tmp_path / "w")
    assert len(mined) == 1 and len(mined[0]) == 20  # every judged query, depth 5 each
    assert all(1 <= len(v) <= 5 for v in mined[0].values())
    assert [h["step"] for h in r["dev_history"]] == [2]
    f = r["test"]["fusion"]  # the end-to-end wiring; the weight choice: test_fusion_weight_...
    assert f["method"] == "zscore" and str(f["weight"]) in f["dev"] and "nDCG@10" in f["after"]
    assert r["dev"]["num_queries"] == 5 and r["test"]["num_queries"] == 20
    for split in ("dev", "test"):
        assert set(r[split]["before"]) == set(r[split]["after"]) >= {"nDCG@10", "R@10"}
    cfg = json.loads((tmp_path / "w" / "export" / "config.json").read_text())
    assert cfg["num_labels"] == 1
    from sentence_transformers import CrossEncoder

    a, b = _pairs()
    st = CrossEncoder(str(tmp_path / "w" / "export"), device="cpu")
    got = st.predict(list(zip(a, b, strict=True)), activation_fn=torch.nn.Identity())
    ours = rerank.score_pairs(rerank.load_reranker(tmp_path / "w" / "export"), a, b)[:, 0]
    np.testing.assert_allclose(np.asarray(got), ours, atol=1e-5)


def test_fusion_weight_is_chosen_on_dev_and_applied_to_test(monkeypatch):
    """cross.fusion: w in first + w * CE maximises dev nDCG@10 and is then applied to test.
    Dev: the CE is right and the first stage wrong, so only w > 1 (grid: 1.3) ranks the
    relevant doc first (ties go to the higher doc id, as in trec_eval); test: the reverse, so
    tuning on test would pick w = 0."""
    from types import SimpleNamespace

    from dualenc import metrics
    from dualenc.cross import evaluation as cross_eval
    from dualenc.index import fusion

    def split(first, ce):
        qrels = {"q": {"d0": 1}}
        before, _ = metrics.evaluate_run(first, qrels, ("nDCG@10",))
        return {
            "ds": SimpleNamespace(qrels=qrels),
            "run": first,
            "ce": ce,
            "top": 2,
            "before": before,
        }

    dev = split({"q": {"d1": 1.0, "d0": 0.0}}, {"q": {"d0": 5.0, "d1": 0.0}})
    test = split({"q": {"d0": 1.0, "d1": 0.0}}, {"q": {"d0": 0.0, "d1": 5.0}})
    ev = object.__new__(cross_eval.RerankEval)
    ev.x = SimpleNamespace(fusion="minmax", eval_metric="nDCG@10", first_stage="bm25")
    ev.measures = ("nDCG@10",)
    ev.dev_full, ev.test = dev, test
    monkeypatch.setattr(ev, "_rerank", lambda params, s: s["ce"])
    out = ev.test_metrics(None, {})
    assert out["fusion"]["weight"] == 1.3 and out["fusion"]["dev"]["0.0"] == pytest.approx(
        0.6309, abs=1e-4
    )
    want, _ = metrics.evaluate_run(
        fusion.fuse(test["run"], test["ce"], "minmax", 1.3), test["ds"].qrels, ("nDCG@10",)
    )
    assert out["fusion"]["after"]["nDCG@10"] == pytest.approx(want["nDCG@10"])
    assert out["fusion"]["after"]["nDCG@10"] < out["before"]["nDCG@10"] == 1.0


def test_symmetric_pair_training_data(tmp_path):
    """cross.symmetric: the trainer sees every pair in both orders with its label."""
    data = cross_data.PairData(["a1", "a2"], ["b1", "b2"], np.array([1, 0], np.int32), "x")
    both = cross_data.symmetrize(data)
    assert both.text_a == ["a1", "a2", "b1", "b2"] and both.text_b == ["b1", "b2", "a1", "a2"]
    np.testing.assert_array_equal(both.labels, [1, 0, 1, 0])
    body = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    body += "".join(f"{i % 2}\t{i}\t{i}\tfirst {i}\tsecond {i}\n" for i in range(40))
    for name in ("train", "dev", "test"):
        (tmp_path / f"{name}.tsv").write_text(body)
    c = _mrpc_config(tmp_path, tmp_path)
    c.unlock()
    c.data.dev.path = str(tmp_path / "dev.tsv")
    c.lock()
    model = cross_model.load_cross_model(c.model, 2)
    plain, _ = cross_task.build_data(c, model)
    c.unlock()
    c.cross.symmetric = True
    c.lock()
    sym, evaluator = cross_task.build_data(c, model)
    assert plain.n == 40 and sym.n == 80
    assert sym.pairs.text_a[40:] == plain.pairs.text_b
    assert len(evaluator.dev.labels) == 40  # dev and test stay as written: scored both ways


def test_held_out_dev_queries_are_seeded_and_disjoint():
    qids = [f"q{i}" for i in range(30)]
    a = cross_data.holdout_qids(qids, 5, seed=0)
    assert a == cross_data.holdout_qids(list(reversed(qids)), 5, seed=0) and len(a) == 5
    assert a != cross_data.holdout_qids(qids, 5, seed=1)
    with pytest.raises(InputError, match="dev_queries"):
        cross_data.holdout_qids(qids, 30, seed=0)


@pytest.mark.parametrize("task", ["cross", "biencoder"])
@pytest.mark.parametrize(
    "over, message",
    [
        ({"data.mine_negatives": "bm2"}, "data.mine_negatives='bm2' must be one of"),
        ({"data.mine_negatives": "both"}, "data.mine_negatives='both' needs data.mine_model"),
        ({"data.mine_depth": 0}, "data.mine_depth must be >= 1"),
        ({"data.mine_skip": -1}, "data.mine_skip=-1 must be >= 0"),
        ({"data.mine_max_relative_score": -0.5}, "data.mine_max_relative_score must be >= 0"),
        ({"data.train.format": "dpr"}, "data.mine_negatives needs data.train.format='beir'"),
    ],
)
def test_mining_config_errors_name_the_key(tmp_path, minilm_path, task, over, message):
    """Both trainers check `data.mine_*` (the cross trainer once took a typo as 'no mining')."""
    c = rerank_config(tmp_path, minilm_path, tmp_path / "beir", **over)
    c.task = task
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_lib.validate(c, 1)
    ok = rerank_config(tmp_path, minilm_path, tmp_path / "beir", task=task)
    ok.data.mine_negatives, ok.data.mine_model = "both", str(minilm_path)
    config_lib.validate(ok, 1)
