"""ArrayRecord store + grain pipeline: round trip, host shards, all positives, teacher scores."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualenc.data import records, st_format
from dualenc.data.examples import TrainExample
from dualenc.data.pipeline import TrainPipeline
from dualenc.io import InputError
from dualenc.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(minilm_path):
    return load_tokenizer(minilm_path)


def _examples(n=16, scores=False):
    """Multi-positive queries (q0 has three), shared passages, varied lengths."""
    out = []
    for i in range(n):
        pos = [f"gold {i} " + "word " * (i % 7)]
        if i % 4 == 0:
            pos += [f"second gold {i}", f"shared gold {i // 8}"]
        neg = [f"neg {i} {j} " + "x " * (3 * j) for j in range(1 + i % 3)] + [f"gold {i + 1} "]
        ex = TrainExample(str(i), f"query {i}" + " why" * (i % 5), pos, neg)
        if scores:
            ex.scores = {t: float(len(t) + i) for t in (*pos, *neg)}
        out.append(ex)
    return out


def _pipe(tok, data=None, **kw):
    args = dict(
        global_batch_size=8,
        num_negatives=2,
        q_max_length=16,
        p_max_length=24,
        seed=1,
        process_index=0,
        process_count=1,
    )
    args.update(kw)
    if data is None and "path" not in kw:
        data = _examples()
    return TrainPipeline(data, tok, **args)


def _take(pipe, n):
    return [next(pipe) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_store_round_trip_equals_in_memory(tok, tmp_path):
    exs = _examples(scores=True)
    root = records.build_store({"train": exs, "dev": exs[:8]}, tmp_path / "s")
    split = records.open_split(root, "train")
    assert not isinstance(split.examples, list) and not isinstance(split.passages, list)
    mem = records.memory_split(exs)
    assert list(split.passages) == mem.passages  # each passage once, ids in first-seen order
    assert len(mem.passages) < sum(len(e.positives) + len(e.negatives) for e in exs)
    assert [split.examples[i] for i in range(len(exs))] == mem.examples
    assert (split.max_positives, split.has_scores) == (3, True)
    ref = _take(_pipe(tok, exs), 5)
    got = _take(_pipe(tok, path=root, format="tfds"), 5)  # streams from the ArrayRecord files
    _assert_same(got, ref)
    assert len(list(root.glob("train.lengths-*.npz"))) == 1  # computed once, cached per tokenizer
    _assert_same(_take(_pipe(tok, path=root, format="tfds"), 5), ref)
    assert records.open_split(root, "dev").examples[7] == mem.examples[7]
    with pytest.raises(FileExistsError):
        records.build_store({"train": exs}, root)
    with pytest.raises(InputError, match="split 'test'"):
        records.open_split(root, "test")
    with pytest.raises(InputError, match="not a TFDS training dataset"):
        records.open_split(tmp_path)


def test_two_hosts_are_disjoint_and_cover_the_global_batch(tok, tmp_path, monkeypatch):
    root = records.build_store({"train": _examples()}, tmp_path / "s")
    kw = dict(path=root, format="tfds", pad_multiple=2)  # fine shapes: hosts' rows differ
    encoded = []
    orig = TrainPipeline._encode

    def spy(self, texts, which, length):
        if self.process_count == 2:  # other tests' pipelines may still be prefetching
            encoded.append(len(texts))
        return orig(self, texts, which, length)

    monkeypatch.setattr(TrainPipeline, "_encode", spy)
    hosts = [_take(_pipe(tok, **kw, process_index=i, process_count=2), 6) for i in range(2)]
    assert set(encoded) == {4, 4 * 3}  # only the local rows (b=4, 1+k=3) are tokenised
    monkeypatch.undo()
    one = _take(_pipe(tok, **kw), 6)  # crosses an epoch boundary
    for step, g in enumerate(one):
        h0, h1 = hosts[0][step], hosts[1][step]
        q0 = {tuple(r) for r in h0["q_pos_ids"]}
        assert not q0 & {tuple(r) for r in h1["q_pos_ids"]}  # disjoint queries
        for key in g:
            assert h0[key].shape[1:] == h1[key].shape[1:]  # hosts agree on padded shapes
            np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), g[key])


def test_q_pos_ids_hold_every_positive(tok):
    exs = _examples()
    pipe = _pipe(tok, exs, global_batch_size=16)
    pid = {t: i for i, t in enumerate(pipe.texts)}
    b = next(pipe)
    assert b["q_pos_ids"].shape == (16, 3) and b["q_pos_ids"].dtype == np.int32
    seen = 0
    for row in range(16):
        ex = next(e for e in exs if pid[e.positives[0]] in b["q_pos_ids"][row])
        want = sorted(pid[t] for t in ex.positives)
        assert b["q_pos_ids"][row].tolist() == want + [-1] * (3 - len(want))
        assert b["p_ids"][row, 0] in want and not set(want) & set(b["p_ids"][row, 1:].tolist())
        seen += len(want) == 3
    assert seen == 4  # the four three-positive queries
    # "gold {i+1}" is a negative of query i but a positive of query i+1: allowed as a negative
    # of i, and q_pos_ids lets the loss mask it as a positive for i+1 only.


def test_teacher_scores_follow_the_sampled_candidates(tok):
    exs = _examples(scores=True)
    pipe = _pipe(tok, exs)
    for b in _take(pipe, 3):
        assert b["teacher_scores"].dtype == np.float32 and b["teacher_scores"].shape == (8, 3)
        for row in range(8):
            # a shared text scores differently per query: find the row's own query
            pos = {pipe.texts[i] for i in b["q_pos_ids"][row] if i >= 0}
            owner = next(e for e in exs if set(e.positives) == pos)
            got = b["teacher_scores"][row].tolist()
            assert got == [owner.scores[pipe.texts[i]] for i in b["p_ids"][row]]
    assert "teacher_scores" not in next(_pipe(tok))


def test_resume_mid_epoch_with_worker_threads(tok, tmp_path):
    root = records.build_store({"train": _examples()}, tmp_path / "s")
    kw = dict(path=root, format="tfds", num_threads=2, prefetch=3)
    expected = _take(_pipe(tok, **kw), 5)
    first = _pipe(tok, **kw)
    _take(first, 3)
    state = json.loads(json.dumps(first.get_state()))  # what the trainer saves with Orbax
    assert state["grain"] == {"next_index": 3} and (state["epoch"], state["position"]) == (1, 1)
    resumed = _pipe(tok, **kw)
    resumed.set_state(state)
    _assert_same(_take(resumed, 2), expected[3:])
    legacy = _pipe(tok, **kw)  # a state saved before grain iterators (epoch/position only)
    legacy.set_state({"epoch": 1, "position": 1})
    _assert_same(_take(legacy, 2), expected[3:])


def test_st_scores_parse_and_errors(tmp_path):
    rows = [
        {"query": "q", "positive": "p", "negative": ["n1", "n2"], "scores": [3, 1.5, 0]},
        {"query": "r", "positive": "p2", "negative": "n3", "label": [2.0, 1.0]},
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = st_format.load_st(path)
    assert exs[0].scores == {"p": 3.0, "n1": 1.5, "n2": 0.0} and exs[1].scores["n3"] == 1.0
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "label": [1.0]}) + "\n")
    with pytest.raises(InputError, match=r"b\.jsonl:2 field 'label': expected 2 finite numbers"):
        st_format.load_st(bad)
    mixed = tmp_path / "m.jsonl"
    mixed.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"query": "z", "positive": "y"}))
    with pytest.raises(InputError, match=r"m\.jsonl:2 field 'scores': .*some lines only"):
        st_format.load_st(mixed)


def test_store_cli(tmp_path, minilm_path, tok):
    src = tmp_path / "t.tsv"
    src.write_text("q0\tp0\tn0\nq1\tp1\nq0\tp2\n")
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "dualenc.data.store", f"--input={src}", "--format=st"]
    lens = [f"--tokenizer={minilm_path}", "--q_max_length=8", "--p_max_length=4"]
    done = subprocess.run([*cmd, f"--output={out}", *lens], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    split = records.open_split(out)
    assert len(split.examples) == 2 and split.max_positives == 2  # q0's lines grouped
    assert sorted(split.passages) == ["n0", "p0", "p1", "p2"]
    (cached,) = out.glob("train.lengths-*.npz")  # precomputed for the run's tokenizer
    q, p = records.token_lengths(split, tok, 8, 4)
    assert q.tolist() == [4, 4] and p.tolist() == [4] * 4  # "p0" is 4 tokens, truncated at 4
    assert list(out.glob("train.lengths-*.npz")) == [cached]
    src.write_text("q0\n")
    bad = subprocess.run([*cmd, f"--output={tmp_path / 'x'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "t.tsv:1 field 'positive'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_nq_toy_store_stores_each_passage_once(tok, tmp_path):
    path = REPO / "data" / "nq-toy" / "train.json"
    exs = records.load_examples(path, "dpr")
    root = records.build_store({"train": exs}, tmp_path / "s")
    split = records.open_split(root)
    texts = sum((len(e.positives) + len(e.negatives) for e in exs), 0)
    assert (len(split.examples), len(split.passages)) == (2000, 1965) and texts > 2 * 1965
    kw = dict(global_batch_size=32, num_negatives=1, q_max_length=32, p_max_length=64)
    ref = _take(_pipe(tok, path=path, format="dpr", **kw), 2)
    _assert_same(_take(_pipe(tok, path=root, format="tfds", **kw), 2), ref)


def test_build_tfds_cli_training_data_is_a_tfds_dataset_with_the_jsonl_batches(tmp_path, tok):
    import tensorflow_datasets as tfds

    exs = _examples(scores=True)
    src = tmp_path / "train.jsonl"
    rows = [
        {"query": e.query, "positive": e.positives[0], "negative": e.negatives,
         "scores": [e.scores[t] / 3 for t in (e.positives[0], *e.negatives)]}
        for e in exs
    ]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "dualenc.build_tfds", f"--src={src}", "--format=st_jsonl"]
    for out in (tmp_path / "a", tmp_path / "b"):
        done = subprocess.run([*cmd, f"--out={out}"], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"out": str(out), "examples": {"train": len(exs)}}
    files = [sorted(p for p in (tmp_path / d).rglob("*") if p.is_file()) for d in "ab"]
    assert [p.read_bytes() for p in files[0]] == [p.read_bytes() for p in files[1]]  # deterministic
    ref = _take(_pipe(tok, path=src, format="st_jsonl"), 5)
    _assert_same(_take(_pipe(tok, path=tmp_path / "a", format="tfds"), 5), ref)
    mem = records.memory_split(st_format.load_st_jsonl(src))
    assert list(records.open_split(tmp_path / "a").examples) == mem.examples  # float64 scores
    passages = tfds.data_source("dualenc_train/passages", data_dir=tmp_path / "a", split="train")
    got = [passages[i]["text"].decode() for i in range(3)]
    assert got == mem.passages[:3]  # a real TFDS dataset: the standard API reads it
    bad = subprocess.run([*cmd, f"--out={tmp_path / 'c'}", "--name=Bad"], capture_output=True,
                         text=True, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: field")
    assert not (tmp_path / "c").exists()
