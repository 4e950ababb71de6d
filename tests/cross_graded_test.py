"""Graded pairs (STS-style regression, `cross.label_scale`) and intermediate-task transfer
(`model.fresh_head`): the STS benchmark reader, correlations, the BCE target, a training run,
config errors and bad labels."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dualenc import metrics
from dualenc.cross import losses as cross_losses
from dualenc.cross import model as cross_model
from dualenc.data import pairs as pairs_lib
from dualenc.inference import rerank
from dualenc.io import InputError, data_dir
from dualenc.training import loop
from dualenc.training.config import ConfigError
from tests.cross_fixtures import pair_config
from tests.tiny_data import WORDS


def write_graded(path: Path, n: int, seed: int) -> Path:
    """sentence1/sentence2/score TSV: the score (0-3) counts the second text's words taken from
    the first half of WORDS, a graded bag-of-words rule."""
    rng = np.random.default_rng(seed)
    lines = ["sentence1\tsentence2\tscore"]
    for i in range(n):
        a = rng.choice(len(WORDS), 3, replace=False)
        y = i % 4
        b = list(rng.choice(10, y, replace=False)) + list(rng.choice(10, 3 - y, replace=False) + 10)
        words = [WORDS[j] for j in rng.permutation(b)]
        lines.append(f"{' '.join(WORDS[j] for j in a)}\t{' '.join(words)}\t{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


def graded_config(tmp: Path, model_dir, **over):
    c = pair_config(tmp, model_dir)
    c.unlock()
    for split, n, seed in (("train", 96, 0), ("dev", 32, 1), ("test", 32, 2)):
        c.data[split].path = str(write_graded(tmp / f"g_{split}.tsv", n, seed))
    c.cross.num_labels = 1
    c.cross.loss = "bce"
    c.cross.label_scale = 3.0
    c.cross.eval_metric = "spearman"
    c.train.num_steps = 36
    for k, v in over.items():
        c.update_from_flattened_dict({k: v})
    c.lock()
    return c


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 200).astype(float)  # many ties, as STS scores have
    pred = gold + rng.normal(0, 2, 200)
    pred[:20] = 1.0  # ties in the prediction too
    m = metrics.correlations(pred, gold)
    assert m["spearman"] == pytest.approx(100 * stats.spearmanr(pred, gold).statistic, abs=1e-9)
    assert m["pearson"] == pytest.approx(100 * stats.pearsonr(pred, gold).statistic, abs=1e-9)
    assert metrics.correlations(-pred, gold)["spearman"] == pytest.approx(-m["spearman"])


def test_graded_scores_are_the_sigmoid_of_the_logit():
    from dualenc.inference import classify

    z = np.array([[-800.0], [-2.0], [0.0], [3.0], [800.0]], np.float32)
    want = [0.0, 1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-3.0)), 1.0]
    np.testing.assert_allclose(classify.graded_scores(z), want, rtol=1e-6, atol=1e-12)


def test_bce_takes_graded_targets():
    z = jnp.array([[[0.4]], [[-1.0]]])
    loss, _ = cross_losses.make_cross_loss(_xcfg())(z, {"labels": jnp.array([0.3, 0.8])})
    want = np.mean([_bce(0.4, 0.3), _bce(-1.0, 0.8)])
    assert float(loss) == pytest.approx(want, rel=1e-6)  # an int cast would give targets 0, 0


def _xcfg():
    from dualenc.training import config as config_lib

    return config_lib.base_config().cross


def _bce(z, y):
    p = 1 / (1 + np.exp(-z))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.data
def test_reads_the_sts_benchmark_release_files():
    root = data_dir() / "stsbenchmark"
    p = pairs_lib.read_pairs(root / "sts-train.csv")
    assert len(p) == 5749 and p.columns == ("sentence1", "sentence2", "score")
    assert (p.text_a[0], p.text_b[0], p.labels[0]) == (
        "A plane is taking off.",
        "An air plane is taking off.",
        "5.000",
    )
    y = pairs_lib.label_scores(p, 5.0)
    assert y.dtype == np.float32 and y[0] == 1.0 and 0 <= y.min() and y.max() <= 1
    assert len(pairs_lib.read_pairs(root / "sts-dev.csv")) == 1500
    assert len(pairs_lib.read_pairs(root / "sts-test.csv")) == 1379


def test_bad_sts_rows_name_file_line_field(tmp_path):
    f = tmp_path / "sts-dev.csv"
    f.write_text("g\tf\t2012\t1\t3.5\ta b\tc d\ng\tf\t2012\t2\t3.5\tonly six\n")
    with pytest.raises(InputError, match=r"sts-dev\.csv:2"):
        pairs_lib.read_pairs(f)
    for bad in ("high", "5.5", "-1", "nan"):
        f.write_text(f"g\tf\t2012\t1\t3.5\ta b\tc d\ng\tf\t2012\t2\t{bad}\ta\tb\n")
        with pytest.raises(InputError, match=r"sts-dev\.csv:2.*score") as e:
            pairs_lib.label_scores(pairs_lib.read_pairs(f), 5.0)
        assert "label_scale" in str(e.value)


@pytest.fixture(scope="module")
def graded_run(tmp_path_factory, minilm_path):
    tmp = tmp_path_factory.mktemp("graded")
    c = graded_config(tmp, minilm_path)
    return c, loop.train_and_evaluate(c, tmp / "w"), tmp / "w"


def test_graded_pairs_train_to_a_high_spearman(graded_run):
    c, r, w = graded_run
    hist = [h["metric"] for h in r["dev_history"]]
    assert r["eval_metric"] == "spearman" and r["best_dev"] == max(hist)
    assert r["test"]["spearman"] > 80, r["test"]  # the 0-3 overlap rule is learnt
    assert set(r["test"]) >= {"pearson", "spearman"}
    # The score is sigmoid(logit): the export's scores rank test pairs as the eval did.
    p = pairs_lib.read_pairs(c.data.test.path)
    z = rerank.score_pairs(rerank.load_reranker(w / "export"), p.text_a, p.text_b)[:, 0]
    gold = pairs_lib.label_scores(p, 3.0)
    rho = metrics.correlations(z, gold)["spearman"]
    assert rho == pytest.approx(r["test"]["spearman"], abs=1e-3)
    cfg = json.loads((w / "export" / "config.json").read_text())
    assert cfg["num_labels"] == 1


def test_fresh_head_keeps_the_classifier_encoder(graded_run, minilm_path):
    _, _, w = graded_run
    c = pair_config(w.parent, minilm_path)
    c.unlock()
    c.model.name_or_path = str(w / "export")
    c.model.init_random = False
    c.model.config_overrides = {}
    with pytest.raises(ConfigError, match="cross.num_labels=2"):
        cross_model.load_cross_model(c.model, 2)  # a 1-label dir, 2 labels asked
    c.model.fresh_head = True
    m = cross_model.load_cross_model(c.model, 2)
    src = rerank.load_reranker(w / "export")
    pre = m.ce.spec.hf_prefix
    flat = lambda t: dict(jax_leaves(t))  # noqa: E731
    base, want = flat(m.params[pre]), flat(src.params[pre])
    assert base.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(base[k], want[k])
    head = flat({k: v for k, v in m.params.items() if k != pre})
    kernels = [v for k, v in head.items() if "kernel" in k]
    assert kernels and all(v.shape[-1] == 2 for v in kernels), head.keys()


def jax_leaves(tree):
    import jax

    return [(jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree.leaves_with_path(tree)]


@pytest.mark.parametrize(
    "over,key",
    [
        ({"cross.loss": "pair_ce", "cross.num_labels": 2}, "cross.label_scale"),
        ({"cross.label_scale": -1.0}, "cross.label_scale"),
        ({"cross.eval_metric": "F1"}, "cross.eval_metric"),
    ],
)
def test_graded_config_errors_name_the_key(tmp_path, minilm_path, over, key):
    c = graded_config(tmp_path, minilm_path, **over)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        loop.train_and_evaluate(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_class_metrics_refuse_spearman(tmp_path, minilm_path):
    c = pair_config(tmp_path, minilm_path, **{"cross.eval_metric": "spearman"})
    with pytest.raises(ConfigError, match=r"cross\.eval_metric"):
        loop.train_and_evaluate(c, tmp_path / "w")


def test_pipeline_carries_graded_targets(tmp_path, minilm_path):
    from dualenc.cross import data as cross_data
    from dualenc.models import loading

    c = graded_config(tmp_path, minilm_path)
    data = cross_data.read_pair_data(c.data.train.path, c.cross)
    assert data.labels.dtype == np.float32
    np.testing.assert_allclose(np.unique(data.labels) * 3, [0, 1, 2, 3], rtol=1e-6)
    tok = loading.read_tokenizer(Path(minilm_path))
    pipe = cross_data.CrossPipeline(tok, pairs=data, global_batch_size=16, max_length=16, seed=0)
    for step in (0, 7):
        _, rows = pipe.rows_at(step)
        y = pipe.batch_at(step)["labels"]
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, data.labels[rows])  # not cast to class ids


def test_classify_cli_reports_the_training_spearman(graded_run, tmp_path):
    """`dualenc.classify --label_scale` on the export reproduces the trainer's test figure."""
    import subprocess
    import sys

    c, r, w = graded_run
    out = tmp_path / "cls"
    cmd = [sys.executable, "-m", "dualenc.classify", f"--model={w / 'export'}"]
    cmd += [f"--data={c.data.test.path}", f"--output={out}", "--label_scale=3", "--noprogress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())["test"]
    assert m["spearman"] == pytest.approx(r["test"]["spearman"], abs=1e-3)
    assert m["pearson"] == pytest.approx(r["test"]["pearson"], abs=1e-3)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 32 and all(0 <= x["score"] <= 3 for x in preds)
    # A label past the scale: one line naming file:line:field, exit 2, nothing written.
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na b\tc d\t1\ne f\tg h\t4.5\n")
    cmd[4:6] = [f"--data={bad}", f"--output={tmp_path / 'bad_out'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "bad.tsv:3" in p.stderr and "score" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "bad_out").exists()
