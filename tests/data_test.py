"""Readers (BEIR, DPR, sentence-transformers), TFDS round trip, real shared data and nq-toy."""

import gzip
import hashlib
import json
import logging
import re
from pathlib import Path

import pytest

from dualenc.data import beir, dpr, st_format
from dualenc.data.examples import TrainExample
from dualenc.io import InputError

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _beir_dir(tmp_path: Path, qrels: str, *, gz: bool = False) -> Path:
    docs = [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
    _write(tmp_path / ("corpus.jsonl.gz" if gz else "corpus.jsonl"), _jsonl(docs))
    _write(
        tmp_path / "queries.jsonl",
        _jsonl([{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}]),
    )
    _write(tmp_path / "qrels" / "test.tsv", qrels)
    return tmp_path


# ----------------------------------------------------------------------------- BEIR


def test_load_beir_gz_and_header(tmp_path):
    ds = beir.load_beir(
        _beir_dir(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n", gz=True)
    )
    assert ds.corpus == {"d1": beir.Doc("T1", "one"), "d2": beir.Doc("", "two")}
    assert ds.queries == {"q1": "first?", "q2": "second?"}
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_load_qrels_with_and_without_header_agree(tmp_path):
    rows = "q1\td1\t1\nq2\td2\t0\n"
    a = beir.load_qrels(_write(tmp_path / "a.tsv", rows))
    b = beir.load_qrels(_write(tmp_path / "b.tsv", "query-id\tcorpus-id\tscore\n" + rows))
    trec = beir.load_qrels(_write(tmp_path / "c.txt", "q1 0 d1 1\nq2 0 d2 0\n"))
    assert a == b == trec == {"q1": {"d1": 1}, "q2": {"d2": 0}}


def test_load_qrels_bad_score_names_line(tmp_path):
    path = _write(tmp_path / "q.tsv", "q1\td1\t1\nq2\td2\tx\n")
    with pytest.raises(InputError, match=r"q\.tsv:2 field 'score'"):
        beir.load_qrels(path)


def test_unknown_qrels_ids_warn_with_counts(tmp_path, caplog):
    root = _beir_dir(tmp_path, "q1\td1\t1\nq1\tnope\t1\nq9\td1\t1\nq9\td2\t1\nq2\td2\t1\n")
    with caplog.at_level(logging.WARNING):
        ds = beir.load_beir(root)
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert "2 qrels naming unknown query ids and 1 naming unknown doc ids" in caplog.text


def test_missing_file_is_named(tmp_path):
    root = _beir_dir(tmp_path, "q1\td1\t1\n")
    with pytest.raises(InputError, match="dev.tsv"):
        beir.load_beir(root, "dev")
    (root / "queries.jsonl").unlink()
    with pytest.raises(InputError, match="queries.jsonl"):
        beir.load_beir(root)


def test_corpus_errors_name_file_line_field(tmp_path):
    good = '{"_id": "a", "text": "x"}\n'
    bad_json = _write(tmp_path / "c1.jsonl", good + '{"_id": "b", "text": \n')
    with pytest.raises(InputError, match=r"c1\.jsonl:2: malformed JSON"):
        beir.load_corpus(bad_json)
    no_id = _write(tmp_path / "c2.jsonl", good + good.replace('"_id": "a", ', ""))
    with pytest.raises(InputError, match=r"c2\.jsonl:2 field '_id': missing"):
        beir.load_corpus(no_id)
    dup = _write(tmp_path / "c3.jsonl", good + '{"_id": "b", "text": "y"}\n' + good)
    with pytest.raises(InputError, match=r"c3\.jsonl:3 .*duplicate doc id 'a' \(also on line 1\)"):
        beir.load_corpus(dup)
    with pytest.raises(InputError, match="empty corpus"):
        beir.load_corpus(_write(tmp_path / "c4.jsonl", "\n"))
    with pytest.raises(InputError, match=r"c5\.jsonl:1 field 'text'"):
        beir.load_corpus(_write(tmp_path / "c5.jsonl", '{"_id": "a", "title": "", "text": ""}\n'))


def test_queries_errors(tmp_path):
    with pytest.raises(InputError, match=r"q\.jsonl:2 field 'text': empty"):
        beir.load_queries(
            _write(tmp_path / "q.jsonl", '{"_id": 1, "text": "a"}\n{"_id": 2, "text": " "}\n')
        )
    assert beir.load_queries(_write(tmp_path / "r.jsonl", '{"_id": 7, "text": "a"}\n')) == {
        "7": "a"
    }


# ----------------------------------------------------------------------------- DPR


def _ctx(text, title="T"):
    return {"title": title, "text": text}


def _dpr_rec(q="who?", pos=("gold",), hard=("hard",), neg=("rand",)):
    return {
        "question": q,
        "answers": ["x"],
        "positive_ctxs": [_ctx(t) for t in pos],
        "negative_ctxs": [_ctx(t) for t in neg],
        "hard_negative_ctxs": [_ctx(t) for t in hard],
    }


def test_dpr_json_and_jsonl(tmp_path):
    recs = [_dpr_rec(), _dpr_rec(q="what?", hard=())]
    for path in (
        _write(tmp_path / "a.json", json.dumps(recs, indent=1)),
        _write(tmp_path / "a.jsonl.gz", _jsonl(recs)),
    ):
        exs = dpr.load_dpr(path)
        assert exs[0] == TrainExample("0", "who?", ["T gold"], ["T hard"], ["x"])
        assert exs[1].negatives == ["T rand"]  # hard negatives preferred, plain ones a fallback
        assert exs[1].qid == "1"


def test_dpr_errors_name_entry_and_field(tmp_path):
    recs = [_dpr_rec(), _dpr_rec(pos=())]
    with pytest.raises(InputError, match=r"b\.json:1 field 'positive_ctxs'.*no positive"):
        dpr.load_dpr(_write(tmp_path / "b.json", json.dumps(recs)))
    with pytest.raises(InputError, match=r"b\.jsonl:2 field 'positive_ctxs'"):
        dpr.load_dpr(_write(tmp_path / "b.jsonl", _jsonl(recs)))
    with pytest.raises(InputError, match=r"c\.json:0 field 'question': empty"):
        dpr.load_dpr(_write(tmp_path / "c.json", json.dumps([_dpr_rec(q=" ")])))
    with pytest.raises(InputError, match=r"d\.json:0 field 'hard_negative_ctxs\[0\]\.text'"):
        dpr.load_dpr(_write(tmp_path / "d.json", json.dumps([_dpr_rec(hard=("",))])))
    with pytest.raises(InputError, match=r"e\.jsonl:2: malformed JSON"):
        dpr.load_dpr(_write(tmp_path / "e.jsonl", _jsonl(recs[:1]) + "{oops\n"))


# ------------------------------------------------------------------------ sentence-transformers


def test_st_jsonl_forms(tmp_path):
    lines = [
        {"query": "q0", "positive": "p0", "negative": "n0"},
        {"anchor": "q1", "positive": "p1", "negative_1": "n1", "negative_2": "n2"},
        ["q2", "p2", "n2a", "n2b"],
        {"query": "q3", "positive": ["p3"]},
    ]
    exs = st_format.load_st(_write(tmp_path / "t.jsonl", _jsonl(lines)))
    assert [(e.query, e.positives, e.negatives) for e in exs] == [
        ("q0", ["p0"], ["n0"]),
        ("q1", ["p1"], ["n1", "n2"]),
        ("q2", ["p2"], ["n2a", "n2b"]),
        ("q3", ["p3"], []),
    ]
    assert [e.qid for e in exs] == ["0", "1", "2", "3"]


def test_st_errors(tmp_path):
    with pytest.raises(InputError, match=r"t\.jsonl:2: malformed JSON"):
        st_format.load_st(_write(tmp_path / "t.jsonl", '["q", "p"]\n["q", \n'))
    with pytest.raises(InputError, match=r"u\.jsonl:1 field 'positive'"):
        st_format.load_st(_write(tmp_path / "u.jsonl", '{"query": "q"}\n'))
    with pytest.raises(InputError, match=r"v\.jsonl:1 field 'negatives': empty passage"):
        st_format.load_st(_write(tmp_path / "v.jsonl", '["q", "p", ""]\n'))
    with pytest.raises(InputError, match=r"w\.tsv:2 field 'positive'"):
        st_format.load_st(_write(tmp_path / "w.tsv", "q\tp\tn\nlonely\n"))


def test_st_tsv(tmp_path):
    exs = st_format.load_st(_write(tmp_path / "t.tsv", "q0\tp0\tn0\tn1\n\nq1\tp1\n"))
    assert [(e.query, e.positives, e.negatives) for e in exs] == [
        ("q0", ["p0"], ["n0", "n1"]),
        ("q1", ["p1"], []),
    ]


def test_st_repeated_anchors_are_grouped(tmp_path):
    lines = [
        {"anchor": "q0", "positive": "p0", "negative": "p1"},
        {"anchor": "q1", "positive": "p1"},
        {"anchor": "q0", "positive": "p1", "negative": ["n0", "p0"]},
        ["q0", "p0", "n0", "n9"],
    ]
    exs = st_format.load_st(_write(tmp_path / "t.jsonl", _jsonl(lines)))
    # one q0 with both positives; a text that is a positive of q0 is never its negative
    assert [(e.qid, e.query, e.positives, e.negatives) for e in exs] == [
        ("0", "q0", ["p0", "p1"], ["n0", "n9"]),
        ("1", "q1", ["p1"], []),
    ]
    tsv = st_format.load_st(_write(tmp_path / "t.tsv", "a\tx\nb\ty\na\tz\tw\n"))
    assert [(e.query, e.positives, e.negatives) for e in tsv] == [
        ("a", ["x", "z"], ["w"]),
        ("b", ["y"], []),
    ]


def test_examples_from_beir_skips_relevant_negatives(tmp_path):
    ds = beir.load_beir(_beir_dir(tmp_path, "q1\td1\t1\nq2\td2\t0\n"))
    exs = st_format.examples_from_beir(ds, {"q1": ["d1", "d2", "unknown"]})
    assert exs == [TrainExample("q1", "first?", ["T1 one"], ["two"])]  # q2 has no score ≥ 1


# ----------------------------------------------------------------------------- real shared data


@pytest.mark.data
def test_real_scifact(shared_data):
    test = beir.load_beir(shared_data / "scifact", "test")
    assert (len(test.corpus), len(test.queries)) == (5183, 1109)
    assert len(test.qrels) == 300 and sum(map(len, test.qrels.values())) == 339
    train = beir.load_beir(shared_data / "scifact", "train")
    assert len(train.qrels) == 809 and sum(map(len, train.qrels.values())) == 919


@pytest.mark.data
def test_real_other_beir_views(shared_data):
    nq = beir.load_beir(shared_data / "nq-open-oracle" / "beir")
    assert (len(nq.corpus), len(nq.queries), len(nq.qrels)) == (2600, 2655, 2655)
    clap = beir.load_beir(shared_data / "clapnq" / "beir")
    assert (len(clap.corpus), len(clap.qrels)) == (593, 300)
    ms = shared_data / "agentset-msmarco-subset"
    plain = beir.load_qrels(ms / "qrels" / "test.tsv")  # headerless: no row may be lost
    assert plain == beir.load_qrels(ms / "qrels" / "test.with_header.tsv")
    ds = beir.load_beir(ms)
    assert len(ds.qrels) == 43 and sum(map(len, ds.qrels.values())) == 4102


@pytest.mark.data
def test_nq_toy_is_reproducible_and_clean(shared_data, tmp_path):
    from dualenc.data import nq_toy

    files = nq_toy.build_files(shared_data / "nq-open-oracle")
    nq_toy.write(tmp_path / "nq", files)
    shipped = REPO / "data" / "nq-toy"
    for rel in files:
        got = hashlib.sha256((tmp_path / "nq" / rel).read_bytes()).hexdigest()
        assert got == hashlib.sha256((shipped / rel).read_bytes()).hexdigest(), rel
    splits = {s: dpr.load_dpr(shipped / f"{s}.json") for s in nq_toy.SPLITS}
    assert [len(v) for v in splits.values()] == [2000, 300, 355]
    gold = {s: {e.positives[0] for e in v} for s, v in splits.items()}
    assert not (gold["train"] & gold["dev"]) and not (gold["train"] & gold["test"])
    for ex in splits["train"]:
        assert ex.negatives and ex.positives[0] not in ex.negatives
        for neg in ex.negatives:
            assert neg in gold["train"]  # mined inside the split
            for a in ex.answers:  # no answer as a whole word, any case
                assert not re.search(rf"(?<!\w){re.escape(a.strip())}(?!\w)", neg, re.I), a
    toy = beir.load_beir(shipped, "dev")
    assert len(toy.corpus) == 2600 and len(toy.qrels) == 300
