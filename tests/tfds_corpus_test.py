"""Corpora as TFDS datasets: round trips from BEIR / JSONL / TSV, random access, host ranges,
bad input naming file:line (library and CLI), and the CorpusSource interface."""

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest
import tensorflow_datasets as tfds

from dualenc.data import records, tfds_corpus, tfds_io
from dualenc.data.beir import Doc, load_corpus
from dualenc.data.examples import TrainExample
from dualenc.io import InputError
from dualenc.multihost import host_range

REPO = Path(__file__).resolve().parents[1]
INFO_FILES = ("dataset_info.json", "features.json", "metadata.json")


@runtime_checkable
class CorpusSource(Protocol):
    """The interface of dualenc.data.corpus_source.CorpusSource (written beside this module)."""

    def __len__(self) -> int: ...
    def read(self, start: int, stop: int) -> tuple[list[str], list[Doc]]: ...
    def fingerprint(self) -> str: ...


# Unicode of every width (non-BMP emoji and math letters, combining marks, CJK), an empty title,
# an empty document (public BEIR corpora have them), tabs-free texts so TSV can carry them too.
DOCS = [
    ("d0", "Title zero", "plain ascii text"),
    ("d1", "", "no title, accents: café naïve"),
    ("42", "Émoji 😀 title", "non-BMP 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 🧬 and 中文 and e\u0301"),
    ("d3", "", ""),
    *[
        (f"x{i}", f"t{i}" if i % 3 else "", f"passage number {i} " + "word " * (i % 13))
        for i in range(60)
    ],
]


def _write_jsonl(path, rows, *, id_key="_id", text_key="text", gz=False):
    lines = []
    for i, (doc_id, title, text) in enumerate(rows):
        obj = {id_key: int(doc_id) if doc_id.isdigit() else doc_id, text_key: text}
        if title or i % 2:
            obj["title"] = title
        lines.append(json.dumps(obj, ensure_ascii=bool(i % 2)) + "\n")
    data = "".join(lines).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _write_tsv(path, rows):
    path.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{x}\t{t}\n" for i, t, x in rows))
    return path


def _build(src, out, **kw):
    kw.setdefault("format", "beir")
    return tfds_corpus.build_corpus(src, out, **kw)


def _all(corpus):
    return corpus.read(0, len(corpus))


def test_round_trip_from_every_format_is_identical_and_deterministic(tmp_path):
    beir_dir = tmp_path / "beir"
    beir_dir.mkdir()
    _write_jsonl(beir_dir / "corpus.jsonl.gz", DOCS, gz=True)
    srcs = {
        "beir": beir_dir,
        "jsonl": _write_jsonl(tmp_path / "c.jsonl", DOCS, id_key="id", text_key="contents"),
        "tsv": _write_tsv(tmp_path / "c.tsv", DOCS),
    }
    want = ([d[0] for d in DOCS], [Doc(d[1], d[2]) for d in DOCS])
    prints = set()
    for fmt, src in srcs.items():
        out = _build(src, tmp_path / f"out_{fmt}", format=fmt, name="tiny", shard_bytes=600)
        corpus = tfds_corpus.TfdsCorpus(out)
        assert isinstance(corpus, CorpusSource) and len(corpus) == len(DOCS)
        assert _all(corpus) == want, fmt  # ids, titles, texts identical, in file order
        prints.add(corpus.fingerprint())
        shards = {p.name for p in corpus.path.glob("tiny-corpus.array_record-*-of-*")}
        assert len(shards) > 3  # several shards, TFDS names, nothing else left over
        assert {p.name for p in corpus.path.iterdir()} - shards == {*INFO_FILES}
    assert len(prints) == 1  # the same documents: the same content fingerprint
    again = _build(srcs["beir"], tmp_path / "again", name="tiny", shard_bytes=600)
    one, two = (sorted(p.rglob("*")) for p in (tmp_path / "out_beir", again))
    assert [p.relative_to(tmp_path / "out_beir") for p in one] == [
        p.relative_to(again) for p in two
    ]
    for a, b in zip(one, two, strict=True):
        assert a.is_dir() or a.read_bytes() == b.read_bytes(), a.name  # byte-identical rebuild
    # an ordinary TFDS dataset: the standard API reads it (text as bytes), no TensorFlow
    ds = tfds.data_source("tiny", data_dir=tmp_path / "out_tsv", split="corpus")
    assert ds[2]["text"].decode() == DOCS[2][2] and ds[2]["id"] == b"42"
    changed = _write_jsonl(tmp_path / "d.jsonl", [*DOCS[:-1], (*DOCS[-1][:2], "edited")])
    other = tfds_corpus.TfdsCorpus(_build(changed, tmp_path / "changed", format="jsonl"))
    assert other.fingerprint() not in prints


def test_random_access_ranges(tmp_path):
    corpus = tfds_corpus.TfdsCorpus(
        _build(_write_jsonl(tmp_path / "c.jsonl", DOCS), tmp_path / "o", shard_bytes=500)
    )
    ids, docs = [d[0] for d in DOCS], [Doc(d[1], d[2]) for d in DOCS]
    n = len(DOCS)
    for start, stop in [(0, 1), (5, 9), (17, 40), (n - 3, n), (30, 30), (40, 10), (n - 2, n + 5)]:
        assert corpus.read(start, stop) == (ids[start:stop], docs[start:stop]), (start, stop)
    assert corpus.fast and [corpus[i] for i in range(n)] == list(zip(ids, docs, strict=True))
    with pytest.raises(ValueError):
        corpus.read(-1, 3)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_host_ranges_cover_the_corpus_disjointly(tmp_path, count):
    for n in (0, 1, 2, 7, 64, 1001):
        parts = [host_range(n, i, count) for i in range(count)]
        assert [r.step for r in parts] == [1] * count
        assert [i for r in parts for i in r] == list(range(n))  # contiguous, in order, once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    corpus = tfds_corpus.TfdsCorpus(
        _build(_write_jsonl(tmp_path / "c.jsonl", DOCS), tmp_path / "o")
    )
    reads = [
        corpus.read(r.start, r.stop)
        for r in map(lambda i: host_range(len(corpus), i, count), range(count))
    ]
    assert sum((ids for ids, _ in reads), []) == [d[0] for d in DOCS]
    with pytest.raises(ValueError):
        host_range(10, count, count)


BAD = {
    "not_utf8": (
        b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "fine"}\n'
        b'{"_id": "c", "text": "caf\xe9"}\n',
        3,
        "not UTF-8",
    ),
    "bad_json": (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "x",}\n', 2, "malformed JSON"),
    "missing_id": (
        b'{"_id": "a", "text": "ok"}\n{"text": "no id"}\n',
        2,
        "field '_id': missing field",
    ),
    "surrogate": (
        b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "x\\ud800y"}\n',
        2,
        "field 'text': string holds a lone UTF-16 surrogate",
    ),
    "duplicate": (
        b'{"_id": "a", "text": "1"}\n{"_id": "b", "text": "2"}\n{"_id": "a", "text": "3"}\n',
        3,
        "duplicate doc id 'a' (also on line 1)",
    ),
    "text_type": (b'{"_id": "a", "text": ["x"]}\n', 1, "field 'text': expected a string"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line_and_leaves_nothing(tmp_path, case):
    data, line, what = BAD[case]
    src = tmp_path / "corpus.jsonl"
    src.write_bytes(data)
    with pytest.raises(InputError) as e:
        _build(src, tmp_path / "out")
    assert str(e.value).startswith(f"{src}:{line}") and what in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # no dir, no temp
    if case in ("not_utf8", "bad_json", "missing_id"):  # the BEIR loader shares the reader
        with pytest.raises(InputError, match=rf"corpus\.jsonl:{line}"):
            load_corpus(src)


def test_bad_tsv_and_empty_corpus(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("a\ttext\n b \n")
    with pytest.raises(InputError, match=r"c\.tsv:2: expected 2 or 3 tab-separated columns"):
        _build(tsv, tmp_path / "o", format="tsv")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match=r"e\.jsonl: empty corpus"):
        _build(empty, tmp_path / "o", format="jsonl")
    assert not (tmp_path / "o").exists()


def test_open_if_tfds(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", DOCS)
    out = _build(src, tmp_path / "o", name="mine")
    assert tfds_corpus.open_if_tfds(src) is None and tfds_corpus.open_if_tfds(tmp_path) is None
    by_data_dir, by_version_dir = (
        tfds_corpus.open_if_tfds(p) for p in (out, out / "mine" / "1.0.0")
    )
    assert by_data_dir.path == by_version_dir.path and _all(by_data_dir) == _all(by_version_dir)
    ex = TrainExample("q", "query", ["pos"], ["neg"])
    store = records.build_store({"train": [ex, ex]}, tmp_path / "store")
    with pytest.raises(InputError, match="expected one TFDS dataset"):
        tfds_corpus.open_if_tfds(store / records.STORE_NAME)  # two configs: not one corpus
    with pytest.raises(InputError, match="lack id / text"):
        tfds_corpus.open_if_tfds(store / records.STORE_NAME / "passages" / "1.0.0")


def test_a_tfds_dataset_built_elsewhere_reads_as_a_corpus(tmp_path):
    feats = tfds.features.FeaturesDict({"id": tfds.features.Text(), "text": tfds.features.Text()})
    vdir = tfds_io.version_dir(tmp_path, "theirs")
    w = tfds_io.SplitWriter(vdir, "theirs", "train", feats, 1 << 20)
    for doc_id, _, text in DOCS:
        w.write({"id": doc_id, "text": text})
    tfds_io.write_info(vdir, "theirs", feats, [w.close()])
    for doc_id, _, text in DOCS:  # the direct all-Text path writes TFDS's own bytes
        ex = {"id": doc_id, "text": text}
        assert w.text_names and w.serialize(ex) == w.serialize(ex, generic=True)
    corpus = tfds_corpus.open_if_tfds(tmp_path)  # no title feature, split 'train', no digest
    assert _all(corpus) == ([d[0] for d in DOCS], [Doc("", d[2]) for d in DOCS])
    assert corpus.fingerprint().startswith("tfds-info-sha256:")


def _cli(*args):
    cmd = [sys.executable, "-m", "dualenc.build_tfds", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)


def test_cli_builds_and_fails_in_one_line(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", DOCS)
    done = _cli(f"--src={src}", "--format=beir", f"--out={tmp_path / 'o'}", "--name=cli")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    corpus = tfds_corpus.TfdsCorpus(tmp_path / "o")
    assert summary["docs"] == len(DOCS) and summary["fingerprint"] == corpus.fingerprint()
    here = tfds_corpus.TfdsCorpus(_build(src, tmp_path / "here", name="cli"))
    for shard in corpus.path.glob("cli-corpus.*"):  # another process: the same bytes
        assert shard.read_bytes() == (here.path / shard.name).read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(BAD["not_utf8"][0])
    run = _cli(f"--src={bad}", "--format=jsonl", f"--out={tmp_path / 'x'}")
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr
    assert errors[0].startswith(f"error: {bad}:3: bytes that are not UTF-8 at column 26 (b'\\xe9")
    assert "Traceback" not in run.stderr and not (tmp_path / "x").exists()
    again = _cli(f"--src={src}", "--format=tsv", f"--out={tmp_path / 'o'}")
    assert again.returncode == 2 and "exists" in again.stderr
