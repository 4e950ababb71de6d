"""TrainPipeline: shapes, determinism, per-host slices, exact resume, passage ids, negatives."""

import json

import numpy as np
import pytest

from dualenc.data.examples import TrainExample
from dualenc.data.pipeline import TrainPipeline
from dualenc.io import InputError
from dualenc.tokenization import TRAIN_BUCKETS, bucket_length, load_tokenizer, tokenize


@pytest.fixture(scope="module")
def tok(minilm_path):
    return load_tokenizer(minilm_path)


def _examples(n=24):
    """Varied lengths; some queries with many, few or no negatives."""
    out = []
    for i in range(n):
        negs = [f"negative {i} {j} " + "word " * j for j in range(i % 4)]
        out.append(
            TrainExample(
                str(i),
                f"question number {i}" + " why" * (i % 5),
                [f"passage {i} " + "text " * (i % 9)],
                negs,
            )
        )
    return out


def _pipe(tok, examples=None, **kw):
    args = dict(
        global_batch_size=8,
        num_negatives=2,
        q_max_length=16,
        p_max_length=24,
        seed=0,
        process_index=0,
        process_count=1,
    )
    args.update(kw)
    return TrainPipeline(examples if examples is not None else _examples(), tok, **args)


def _ids(pipe):
    """Passage text → id (the pipeline stores texts by id)."""
    return {t: i for i, t in enumerate(pipe.texts)}


def _take(pipe, n):
    return [next(pipe) for _ in range(n)]


def _same(a, b):
    return all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_shapes_dtypes_and_content(tok):
    pipe = _pipe(tok)
    assert (pipe.num_examples, pipe.steps_per_epoch) == (24, 3)
    b = next(pipe)
    lq, lp = b["q_input_ids"].shape[1], b["p_input_ids"].shape[2]
    assert b["q_input_ids"].shape == b["q_attention_mask"].shape == (8, lq)
    assert b["p_input_ids"].shape == b["p_attention_mask"].shape == (8, 3, lp)
    assert b["p_ids"].shape == (8, 3)
    assert all(v.dtype == np.int32 for v in b.values())
    q_lens = [len(ids) for ids in tokenize(tok, [e.query for e in _examples()], 16)]
    assert b["q_attention_mask"].sum(1).max() <= lq
    assert lq == bucket_length(int(b["q_attention_mask"].sum(1).max()), TRAIN_BUCKETS, 16)
    assert lq <= 16 and lp <= 24 and max(q_lens) <= 16
    assert (b["q_input_ids"][b["q_attention_mask"] == 0] == 0).all()
    # each row is the tokenised (truncated) text its passage id names, left-aligned
    for row in range(8):
        for j in range(3):
            ids = tokenize(tok, [pipe.texts[b["p_ids"][row, j]]], 24)[0]
            assert b["p_attention_mask"][row, j].tolist() == [1] * len(ids) + [0] * (lp - len(ids))
            assert b["p_input_ids"][row, j, : len(ids)].tolist() == ids


def test_positive_is_own_and_negatives_never_positive(tok):
    exs = _examples()
    exs[0].negatives = list(exs[0].positives) + ["other"]  # its own positive listed as negative
    pipe = _pipe(tok, exs, num_negatives=3)
    pid = _ids(pipe)
    pos_of = {pid[e.positives[0]]: e for e in exs}
    for b in _take(pipe, 3 * 4):
        for q_row, ids in zip(b["q_input_ids"], b["p_ids"], strict=True):
            ex = pos_of[int(ids[0])]
            q_ids = tokenize(tok, [ex.query], 16)[0]
            assert q_row[: len(q_ids)].tolist() == q_ids
            own = {pid[t] for t in ex.positives}
            assert not own & set(ids[1:].tolist())
            if ex.negatives:  # sampled (with replacement if too few) from its own negatives
                assert set(ids[1:].tolist()) <= {pid[t] for t in ex.negatives}


def test_epochs_cover_each_example_once(tok):
    pipe = _pipe(tok, num_negatives=0)
    firsts = []
    for _ in range(2):
        ids = np.concatenate([b["p_ids"][:, 0] for b in _take(pipe, 3)])
        assert sorted(ids.tolist()) == sorted(_ids(pipe)[e.positives[0]] for e in _examples())
        firsts.append(ids.tolist())
    assert firsts[0] != firsts[1]  # reshuffled per epoch


def test_deterministic_by_seed(tok):
    a, b, c = _pipe(tok, seed=3), _pipe(tok, seed=3), _pipe(tok, seed=4)
    ba, bb, bc = _take(a, 7), _take(b, 7), _take(c, 7)
    assert _same(ba, bb)
    assert not _same(ba, bc)


def test_host_slices_partition_the_global_batch(tok):
    full = _take(_pipe(tok), 4)
    parts = [_take(_pipe(tok, process_index=i, process_count=4), 4) for i in range(4)]
    for step, g in enumerate(full):
        for key in g:
            assert all(p[step][key].shape[0] == 2 for p in parts)
            np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), g[key])
    with pytest.raises(ValueError, match="divisible"):
        _pipe(tok, process_index=0, process_count=3)


def test_resume_from_state_is_exact(tok):
    ref = _pipe(tok, seed=5)
    expected = _take(ref, 9)  # crosses two epoch boundaries (3 steps per epoch)
    first = _pipe(tok, seed=5)
    _take(first, 4)
    state = json.loads(json.dumps(first.get_state()))
    assert state["epoch"] == 1 and state["position"] == 1
    resumed = _pipe(tok, seed=5)
    resumed.set_state(state)
    assert _same(_take(resumed, 5), expected[4:])
    with pytest.raises(ValueError, match="seed"):
        _pipe(tok, seed=6).set_state(state)


def test_duplicate_texts_share_ids(tok):
    exs = _examples(8)
    exs[1].positives = list(exs[0].positives)  # two queries, one gold passage
    exs[2].negatives = list(exs[3].positives)  # a negative that is someone's positive
    pipe = _pipe(tok, exs, num_negatives=1)
    b = next(pipe)
    pos = {int(i) for i in b["p_ids"][:, 0]}
    assert len(pos) == 7  # 8 rows, queries 0 and 1 share a positive id
    pid = _ids(pipe)
    row2 = [r for r in range(8) if b["p_ids"][r, 0] == pid[exs[2].positives[0]]][0]
    assert b["p_ids"][row2, 1] == pid[exs[3].positives[0]]


def test_queries_without_negatives_get_other_passages(tok):
    exs = [TrainExample(str(i), f"q{i}", [f"p{i}", f"alt{i}"]) for i in range(4)]
    pipe = _pipe(tok, exs, global_batch_size=4, num_negatives=5)
    pid = _ids(pipe)
    for b in _take(pipe, 5):
        for ids in b["p_ids"]:
            ex = next(e for e in exs if ids[0] in (pid[e.positives[0]], pid[e.positives[1]]))
            own = {pid[t] for t in ex.positives}
            assert not own & set(ids[1:].tolist())


def test_remainder_and_errors(tok):
    pipe = _pipe(tok, _examples(20), drop_remainder=False)
    assert pipe.steps_per_epoch == 3
    batches = _take(pipe, 3)
    assert batches[-1]["p_ids"].shape == (8, 3)  # the short batch wraps: fixed shapes
    assert pipe.get_state()["epoch"] == 1
    assert _pipe(tok, _examples(20)).steps_per_epoch == 2
    with pytest.raises(InputError, match="global batch size"):
        _pipe(tok, _examples(5))


def test_pad_multiple_and_path_loading(tok, tmp_path):
    recs = [
        {
            "question": f"q {i}",
            "positive_ctxs": [{"title": "t", "text": f"p {i}"}],
            "hard_negative_ctxs": [{"title": "t", "text": f"n {i}"}],
        }
        for i in range(8)
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(recs))
    pipe = TrainPipeline(
        path=path,
        format="dpr",
        tokenizer=tok,
        batch_size=4,
        num_negatives=1,
        q_max_length=30,
        p_max_length=30,
        pad_multiple=8,
        process_index=0,
        process_count=1,
    )
    b = next(pipe)
    assert b["q_input_ids"].shape[1] % 8 == 0 and b["p_input_ids"].shape[2] % 8 == 0
    assert pipe.texts[b["p_ids"][0, 1]].startswith("t n ")


def test_negatives_resampled_per_epoch(tok):
    exs = [
        TrainExample(str(i), f"q{i}", [f"p{i}"], [f"n{i} {j}" for j in range(6)]) for i in range(8)
    ]
    pipe = _pipe(tok, exs, num_negatives=2)
    by_epoch = [{int(r[0]): tuple(r[1:]) for r in next(pipe)["p_ids"]} for _ in range(3)]
    assert by_epoch[0] != by_epoch[1] or by_epoch[1] != by_epoch[2]
    again = _pipe(tok, exs, num_negatives=2)
    assert by_epoch[0] == {int(r[0]): tuple(r[1:]) for r in next(again)["p_ids"]}


def _packed_pipe(tok, **kw):
    """64 examples, global batch 32, 2 negatives: enough texts for many packed rows per side."""
    return _pipe(tok, _examples(64), global_batch_size=32, packing=True, **kw)


def test_packed_host_parts_concatenate_to_the_one_host_batch(tok):
    """Two hosts each pack their part of the global batch's rows (laid out from the token
    lengths alike on both), and the parts concatenate, key by key, to one host's packed batch:
    so a two-process run trains on the arrays of a one-process run (issue 24)."""
    full = _take(_packed_pipe(tok), 3)
    parts = [_take(_packed_pipe(tok, process_index=i, process_count=2), 3) for i in range(2)]
    for step, g in enumerate(full):
        assert g["q_input_ids"].shape[0] < 32 and g["p_input_ids"].shape[0] < 96  # packed
        for key in g:
            got = np.concatenate([p[step][key] for p in parts])
            np.testing.assert_array_equal(got, g[key], err_msg=f"step {step} {key}")
        for p in parts:  # each host holds real texts, not just padding rows
            assert (p[step]["q_segment_ids"] > 0).any() and (p[step]["p_segment_ids"] > 0).any()
        # rows cross hosts: host 1's rows hold passages of host 0's queries (and tokenised there)
        half = g["p_input_ids"].shape[0] // 2
        assert (parts[0][step]["p_text_row"] >= half).any()


def test_packed_batch_is_the_padded_batch_packed(tok):
    """The pipeline's packing (from token lengths, per host) gives exactly `pack_batch` of its
    padded batch, the one-process layout trained on before issue 24: same bits on one host."""
    from dualenc.inference import packing

    padded = _take(_pipe(tok, _examples(64), global_batch_size=32), 3)
    packed = _take(_packed_pipe(tok), 3)
    for a, b in zip(padded, packed, strict=True):
        want = packing.pack_batch(a, max_segments=16, rows_multiple=8, pad=0)  # 8 devices
        assert list(want) == list(b)
        for key in want:
            assert want[key].dtype == b[key].dtype
            np.testing.assert_array_equal(b[key], want[key], err_msg=key)
