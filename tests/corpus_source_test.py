"""Streamed corpora (`data.corpus_source`) and the input errors every reader shares: bytes that
are not UTF-8 and JSON strings with lone surrogates name file:line (and field), and the commands
exit 2 with one line and nothing written."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualenc import io
from dualenc.data import corpus_source
from dualenc.data.beir import Doc, load_corpus
from dualenc.data.corpus_files import iter_corpus

REPO = Path(__file__).resolve().parents[1]


def _rows(n: int) -> list[dict]:
    return [
        {"_id": f"d{i}", "title": f"t{i}" if i % 2 else "", "text": f"text é {i}"} for i in range(n)
    ]


def _write_jsonl(path: Path, rows, blank_every: int = 0) -> Path:
    lines = []
    for i, r in enumerate(rows):
        lines.append(json.dumps(r, ensure_ascii=False))
        if blank_every and i % blank_every == 0:
            lines.append("")
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_jsonl_reads_any_range_like_the_dict_reader(tmp_path, name):
    path = _write_jsonl(tmp_path / name, _rows(23), blank_every=5)
    src = corpus_source.open_corpus(path)
    ref = load_corpus(path)
    assert len(src) == 23 and src.offsets.dtype.name == "int64"
    ids, docs = src.read(0, 23)
    assert ids == list(ref) and docs == list(ref.values())
    for lo, hi in [(0, 7), (7, 14), (14, 23), (3, 4), (20, 30), (5, 2)]:  # sequential + random
        ids, docs = src.read(lo, hi)
        assert ids == list(ref)[lo:hi] and docs == [ref[d] for d in ids]
    assert corpus_source.read_ids(src, chunk=4) == list(ref)
    assert src.fingerprint() == corpus_source.open_corpus(path).fingerprint()
    _write_jsonl(path, [*_rows(22), {"_id": "d22", "text": "changed"}])
    assert corpus_source.open_corpus(path).fingerprint() != src.fingerprint()


def test_beir_dir_tsv_and_list_sources(tmp_path):
    _write_jsonl(tmp_path / "corpus.jsonl", _rows(3))
    assert corpus_source.read_ids(corpus_source.open_corpus(tmp_path)) == ["d0", "d1", "d2"]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("pid\tpassage\n7\tseven\n\n8\teight\n")
    src = corpus_source.open_corpus(tsv)
    assert src.read(0, 2) == (["7", "8"], [Doc("", "seven"), Doc("", "eight")])
    # 3 columns: DPR's `id text title` unless a header names the title second; the one-pass
    # reader that `dualenc.build_tfds` uses reads every variant as open_corpus does
    for name, text, want in [
        ("t3.tsv", "1\tbody\tT\n", Doc("T", "body")),
        ("dpr.tsv", "id\ttext\ttitle\n1\tbody\tT\n", Doc("T", "body")),
        ("tt.tsv", "id\ttitle\ttext\n1\tT\tbody\n", Doc("T", "body")),
        ("two.tsv", "pid\tpassage\n1\tbody\n", Doc("", "body")),
    ]:
        (tmp_path / name).write_text(text)
        assert corpus_source.open_corpus(tmp_path / name).read(0, 1) == (["1"], [want]), name
        assert list(iter_corpus(tmp_path / name, "tsv")) == [(text.count("\n"), "1", want)]
    pyserini = tmp_path / "p.jsonl"
    pyserini.write_text('{"id": 3, "contents": "body"}\n')
    assert corpus_source.open_corpus(pyserini).read(0, 1) == (["3"], [Doc("", "body")])
    assert list(iter_corpus(pyserini, "jsonl")) == [(1, "3", Doc("", "body"))]
    a = corpus_source.ListCorpus(["a", "b"], [Doc("", "x"), Doc("", "y")])
    b = corpus_source.ListCorpus(["a", "b"], [Doc("", "x"), Doc("", "z")])
    assert len(a) == 2 and a.read(1, 2) == (["b"], [Doc("", "y")])
    assert a.fingerprint() != b.fingerprint()


BAD = [
    (
        b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "x\xff"}\n',
        ":2: bytes that are not UTF-8",
    ),
    (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "x\\ud800"}\n', ":2 field 'text': string"),
    (b'{"_id": "a", "text": "ok"}\n{"_id": "a", "text": "y"}\n', ":2 field '_id': duplicate"),
    (b'{"_id": "a", "text": "ok"}\n{"text": "y"}\n', ":2 field '_id': missing field"),
    (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "title": 3, "text": "y"}\n', ":2 field 'title'"),
    (b'{"_id": "a", "text": "ok"}\n{"_id": "b"\n', ":2: malformed JSON"),
]


@pytest.mark.parametrize("data,match", BAD)
def test_bad_rows_name_file_line_field(tmp_path, data, match):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(data)
    with pytest.raises(io.InputError) as e:
        corpus_source.open_corpus(path)
    assert f"{path}{match}" in str(e.value)


def test_shared_readers_report_bad_bytes_and_surrogates(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_bytes(b'{"_id": "q", "text": "fine"}\n\n{"_id": "r", "text": "caf\xe9"}\n')
    with pytest.raises(io.InputError, match=r"q\.jsonl:3: bytes that are not UTF-8"):
        list(io.read_jsonl(bad))
    sur = tmp_path / "s.jsonl"
    sur.write_text('{"_id": "q", "meta": {"answers": ["\\udc00"]}}\n')
    with pytest.raises(io.InputError, match=r"s\.jsonl:1 field 'meta\.answers\[0\]'"):
        list(io.read_jsonl(sur))
    pair = tmp_path / "p.jsonl"
    pair.write_text('{"_id": "q", "text": "\\ud83d\\ude00"}\n')  # a valid surrogate PAIR
    assert list(io.read_jsonl(pair))[0][1]["text"] == "\U0001f600"
    tsv = tmp_path / "qrels.tsv"
    tsv.write_bytes(b"q\td\t1\nq\td\xc3\t1\n")
    with pytest.raises(io.InputError, match=r"qrels\.tsv:2: bytes that are not UTF-8"):
        with io.open_text(tsv) as f:
            list(f)
    with io.open_text(pair) as f:  # read(n) and read() as json.load uses them
        assert f.read(1) == "{" and f.read().endswith("}\n")


def _cli(module: str, *args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("kind", ["bytes", "surrogate"])
def test_commands_exit_2_with_one_line_and_write_nothing(tmp_path, kind):
    """encode, evaluate and mine on a corpus with a bad row: exit 2, one stderr line naming
    file:line, no output (the check runs before any model is loaded)."""
    bad_row = (
        b'{"_id": "b", "text": "x\xff"}\n'
        if kind == "bytes"
        else b'{"_id": "b", "text": "\\ud800"}\n'
    )
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_bytes(b'{"_id": "a", "text": "ok"}\n' + bad_row)
    (data / "queries.jsonl").write_text('{"_id": "q", "text": "ok"}\n')
    (data / "qrels" / "test.tsv").write_text("q\ta\t1\n")
    where = f"{data / 'corpus.jsonl'}:2"
    out = tmp_path / "out"
    runs = [
        (
            "dualenc.encode",
            "--model",
            "unused",
            "--input",
            str(data / "corpus.jsonl"),
            "--output",
            str(out / "e.npy"),
        ),
        ("dualenc.evaluate", "--index", "bm25", "--data", str(data), "--output", str(out)),
        ("dualenc.mine", "--data", str(data), "--split", "test", "--output", str(out / "m.jsonl")),
    ]
    for module, *args in runs:
        r = _cli(module, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (module, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and len(lines) == 1 and where in lines[0], (
            module,
            lines,
        )
        assert not out.exists(), module
