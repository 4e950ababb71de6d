"""The strategy study on tiny BEIR data: deterministic dev carve, result rows, resumable reruns."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import pytest
from tiny_data import save_tiny_bert, write_beir

from dualenc import study as study_cmd
from dualenc.data import splits
from dualenc.data.beir import load_qrels
from dualenc.io import InputError
from dualenc.training import study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_path):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, seed=7)


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    """Tiny BEIR dir (no empty doc): train = its 20 judged queries, test = 5 of them."""
    root = write_beir(tmp_path_factory.mktemp("beir"))
    corpus = (root / "corpus.jsonl").read_text().splitlines()  # the trainer refuses empty docs
    (root / "corpus.jsonl").write_text("\n".join(corpus[:-1]) + "\n")
    lines = (root / "qrels" / "dev.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    (root / "qrels" / "train.tsv").write_text("\n".join([header, *rows]) + "\n")
    (root / "qrels" / "test.tsv").write_text("\n".join([header, *rows[-5:]]) + "\n")
    return root


def _config(tiny_bert, beir):
    spec = importlib.util.spec_from_file_location("study_cfg", REPO / "configs/study/scifact.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.eval_root = str(beir)
    c.carve.fraction = 0.25
    t = c.train
    t.model.name_or_path = str(tiny_bert)
    t.data.q_max_length = t.data.p_max_length = 16
    t.train.batch_size, t.train.learning_rate, t.train.warmup_steps = 8, 1e-3, 0
    t.train.dropout = False
    t.log.every_steps = 1
    c.num_steps, c.seeds = 2, (0, 1)
    keep = ("zero_shot", "am_in_batch", "margin_mse")
    for name in list(c.strategies):
        if name not in keep:
            del c.strategies[name]
    c.order = keep
    c.eval.max_length, c.eval.cache = 16, False
    c.mine.range_min = 0
    return c


def test_carve_is_deterministic_and_disjoint(beir, tmp_path):
    a = splits.carve_dev(
        beir, tmp_path / "a", source_split="train", test_split="test", fraction=0.25, seed=3
    )
    b = splits.carve_dev(
        beir, tmp_path / "b", source_split="train", test_split="test", fraction=0.25, seed=3
    )
    assert a == b
    train, dev = a
    test = set(load_qrels(tmp_path / "a" / "qrels" / "test.tsv"))
    assert set(train) & set(dev) == set() and (set(train) | set(dev)) & test == set()
    assert len(dev) == 4 and len(train) == 11  # 20 train queries, 5 also in test
    assert sorted(load_qrels(tmp_path / "a" / "qrels" / "dev_carved.tsv")) == dev
    c = splits.carve_dev(
        beir, tmp_path / "c", source_split="train", test_split="test", fraction=0.25, seed=4
    )
    assert c[1] != dev  # the seed matters


@pytest.fixture
def compile_cache(tmp_path):
    """The persistent compilation cache: runs with the same step shapes compile once."""
    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    study_cmd.enable_compile_cache(tmp_path / "jax_cache")
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_study_rows_and_resume(tiny_bert, beir, tmp_path, monkeypatch, compile_cache):
    cfg = _config(tiny_bert, beir)
    summary = study.Study(cfg, tmp_path).run_all()
    rows = summary["strategies"]
    assert list(rows) == ["zero_shot", "am_in_batch", "margin_mse"]
    assert [rows[n]["n"] for n in rows] == [1, 2, 2]
    for name in ("am_in_batch", "margin_mse"):
        for seed in (0, 1):
            d = tmp_path / "runs" / name / f"s{seed}"
            res = json.loads((d / "result.json").read_text())
            assert res["hparams"]["steps"] == 2 and 0 <= res["test"]["nDCG@10"] <= 1
            assert (d / "test.trec").stat().st_size and (d / "dev.trec").stat().st_size
    teacher = json.loads((tmp_path / "mined" / "teacher.json").read_text())
    assert teacher["model"] == str(tmp_path / "runs" / "am_in_batch" / "s0" / "train" / "export")
    assert all("scores" in json.loads(x) for x in (tmp_path / "mined" / "teacher.jsonl").open())
    assert rows["am_in_batch"]["hparams"]["loss"] == "adaptive_margin"
    assert rows["margin_mse"]["hparams"]["loss"] == "margin_mse"
    table = (tmp_path / "study.md").read_text()
    assert all(f"| {n} |" in table for n in rows) and (tmp_path / "study.png").exists()

    def fail(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study.loop, "train_and_evaluate", fail)
    shutil.rmtree(tmp_path / "runs" / "margin_mse" / "s1")
    with pytest.raises(AssertionError, match="trained again"):
        study.Study(cfg, tmp_path).run_all()
    partial = study.Study(cfg, tmp_path).report_finished()  # trains nothing
    assert [partial["strategies"][n]["n"] for n in partial["strategies"]] == [1, 2, 1]
    monkeypatch.undo()
    again = study.Study(cfg, tmp_path).run_all()
    assert again["strategies"]["am_in_batch"] == rows["am_in_batch"]


def test_mined_file_with_unknown_ids_names_file_line(beir, tmp_path):
    """A mined file from another split (qids not in the carved train) fails at file:line."""
    train, dev = splits.carve_dev(
        beir, tmp_path / "c", source_split="train", test_split="test", fraction=0.25, seed=3
    )
    recs = [{"qid": q, "query": "x", "positive": ["a"], "negative": ["b"]} for q in train[:3]]
    recs.insert(2, {**recs[0], "qid": dev[0]})
    st = tmp_path / "mined.jsonl"
    st.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(InputError, match=rf"mined.jsonl:3 field 'qid'.*{dev[0]}"):
        splits.check_mined_qids(st, set(train))
    dpr = tmp_path / "mined.json"
    dpr.write_text(json.dumps([{"qid": train[0]}, {"question": "no id"}]))
    with pytest.raises(InputError, match=r"mined.json:1 field 'qid'"):
        splits.check_mined_qids(dpr, set(train))
    dpr.write_text(json.dumps([{"qid": q} for q in train]))
    splits.check_mined_qids(dpr, set(train))
