"""Encoding: order under bucketing, sharded = single-device, JSONL input errors, the CLI."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dualenc.inference import batching, corpus_encode, encode
from dualenc.io import InputError
from dualenc.models import loading

REPO = Path(__file__).resolve().parent.parent
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_path):
    """A random tiny BERT saved by transformers, with the MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, **TINY)).save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_path / name, path / name)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return loading.load_encoder(tiny_dir, pooling="mean", normalize=True)


def mixed_texts(n: int = 37, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    lens = rng.choice([1, 2, 5, 12, 40, 90, 150], size=n)
    return [" ".join(rng.choice(words, size=k)) + f" #{i}" for i, k in enumerate(lens)]


def test_order_preserved_under_bucketing(tiny):
    texts = mixed_texts(19)
    batched = encode.encode_texts(tiny, texts, batch_size=8, progress=False)
    one_by_one = np.concatenate(
        [encode.encode_texts(tiny, [t], batch_size=1, progress=False) for t in texts]
    )
    assert batched.shape == (len(texts), 32) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # rows really differ
    perm = np.random.default_rng(1).permutation(len(texts))
    shuffled = encode.encode_texts(tiny, [texts[i] for i in perm], batch_size=8, progress=False)
    np.testing.assert_allclose(shuffled, batched[perm], atol=1e-5, rtol=0)


def test_sharded_equals_single_device(tiny):
    assert jax.device_count() == 8  # conftest
    texts = mixed_texts(20, seed=2)
    sharded = encode.encode_texts(tiny, texts, batch_size=16, progress=False)
    single = encode.encode_texts(tiny, texts, batch_size=3, progress=False)  # 3 < 8: one device
    np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=0)
    placer = batching.Placer(tiny.params, batching.default_mesh())
    assert placer.rows(16, 16) == 16 and placer.rows(5, 16) == 8 and placer.rows(3, 3) == 3
    _, ids, _ = placer.put(np.zeros((16, 16), np.int32), np.ones((16, 16), np.int32))
    assert len(ids.sharding.device_set) == 8


def test_one_compile_per_shape_and_trained_params_reuse_it(tiny):
    texts = mixed_texts(24, seed=3)
    step = encode.encode_step(tiny.spec)
    encode.encode_texts(tiny, texts, batch_size=8, progress=False)
    compiled = step._cache_size()
    first = encode.encode_texts(tiny, texts, batch_size=8, progress=False)
    new = loading.encoder_from_params(tiny, jax.tree.map(lambda x: x * 1.1, tiny.params))
    second = encode.encode_texts(new, texts, batch_size=8, progress=False)
    assert encode.encode_step(new.spec) is step and step._cache_size() == compiled
    assert np.abs(first - second).max() > 1e-4


def test_empty_list_and_bad_batch_size(tiny):
    assert encode.encode_texts(tiny, [], progress=False).shape == (0, 32)
    with pytest.raises(ValueError, match="batch_size"):
        encode.encode_texts(tiny, ["x"], batch_size=0, progress=False)


def test_beir_doc_text():
    from dualenc.data.beir import Doc

    assert encode.beir_doc_text({"title": "T", "text": "body "}) == "T body"
    assert encode.beir_doc_text({"text": " body"}) == "body"
    assert encode.beir_doc_text({"title": "T", "text": ""}) == "T"
    assert encode.beir_doc_text(Doc("Title", "text")) == "Title text"


def _write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_read_texts(tmp_path):
    lines = [
        json.dumps({"_id": "a", "title": "Title", "text": "first"}),
        "",
        json.dumps({"text": "second"}),
    ]
    assert encode.read_texts(_write(tmp_path / "in.jsonl", lines)) == ["Title first", "second"]
    assert encode.read_texts(_write(tmp_path / "in.jsonl.gz", lines, gz=True))[1] == "second"


@pytest.mark.parametrize(
    "bad, match",
    [
        ("{not json", r"in\.jsonl:3: malformed JSON"),
        (json.dumps({"title": "no text"}), r"in\.jsonl:3 field 'text': missing field"),
        (json.dumps({"text": 5}), r"in\.jsonl:3 field 'text': expected a string"),
        (json.dumps({"text": "x", "title": 7}), r"in\.jsonl:3 field 'title': expected a string"),
        ("[1, 2]", r"in\.jsonl:3: expected a JSON object"),
    ],
)
def test_read_texts_errors_name_file_line_field(tmp_path, bad, match):
    path = _write(
        tmp_path / "in.jsonl", [json.dumps({"text": "ok"}), json.dumps({"text": "ok"}), bad]
    )
    with pytest.raises(InputError, match=match):
        encode.read_texts(path)


def test_empty_texts_are_kept_with_one_warning(tmp_path, tiny, caplog):
    """Public collections hold empty documents: kept, counted once, embedded as [CLS] [SEP]."""
    lines = [
        json.dumps({"text": "ok"}),
        json.dumps({"text": "  "}),
        json.dumps({"title": "", "text": ""}),
    ]
    with caplog.at_level("WARNING"):
        texts = encode.read_texts(_write(tmp_path / "in.jsonl", lines))
    assert texts == ["ok", "", ""]
    warnings = [r.getMessage() for r in caplog.records if "empty" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 texts are empty" in warnings[0]
    emb = encode.encode_texts(tiny, ["", "ok", ""], batch_size=4, progress=False)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
    assert np.isfinite(emb).all() and abs(np.linalg.norm(emb[0]) - 1) < 1e-5


def test_read_texts_empty_and_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match=r"empty\.jsonl: no texts to encode: the file is empty"):
        encode.read_texts(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="not found"):
        encode.read_texts(tmp_path / "absent.jsonl")


def test_encode_file_is_atomic(tiny_dir, tmp_path, monkeypatch):
    inp = _write(tmp_path / "in.jsonl", [json.dumps({"text": f"text {i}"}) for i in range(5)])
    out = tmp_path / "out" / "emb.npy"
    emb = corpus_encode.encode_file(str(tiny_dir), inp, out, batch_size=4, progress=False)
    np.testing.assert_array_equal(np.load(out), emb)
    before = out.read_bytes()

    def broken_save(f, arr):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        corpus_encode.encode_file(str(tiny_dir), inp, out, batch_size=4, progress=False)
    assert out.read_bytes() == before  # the old output survives, no partial file
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.npy"]
    out2 = tmp_path / "out" / "new.npy"
    with pytest.raises(OSError):
        corpus_encode.encode_file(str(tiny_dir), inp, out2, batch_size=4, progress=False)
    assert not out2.exists()


def _cli(*args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "dualenc.encode", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end(tiny_dir, tmp_path):
    texts = mixed_texts(11, seed=4)
    inp = _write(tmp_path / "in.jsonl", [json.dumps({"title": "T", "text": t}) for t in texts])
    out = tmp_path / "emb.npy"
    r = _cli(
        "--model",
        str(tiny_dir),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--batch_size",
        "4",
        "--max_length",
        "64",
    )
    assert r.returncode == 0, r.stderr
    ref = encode.encode_texts(
        loading.load_encoder(tiny_dir),
        [f"T {t}" for t in texts],
        batch_size=4,
        max_length=64,
        progress=False,
    )
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5, rtol=0)


def test_cli_bad_input_and_help(tiny_dir, tmp_path):
    inp = _write(tmp_path / "in.jsonl", [json.dumps({"text": "ok"}), "{broken"])
    out = tmp_path / "emb.npy"
    r = _cli("--model", str(tiny_dir), "--input", str(inp), "--output", str(out))
    assert r.returncode == 2
    assert f"{inp}:2: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    r = _cli("--help")  # absl prints the help and exits with status 1
    for word in ("--model", "--input", "--output", "--batch_size", "--max_length", "--dtype"):
        assert word in r.stdout
