"""Portable export (dualenc.export): ONNX and jax.export artifacts match dualenc's own outputs
at two batch sizes and lengths (dynamic dims), run without dualenc's model code, and the CLI
rejects bad input with one line and writes nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers

from dualenc.export import onnx as export_onnx
from dualenc.export import portable, runtime
from dualenc.inference.encode import encode_texts
from dualenc.inference.rerank import load_reranker, score_pairs
from dualenc.io import InputError
from dualenc.models.bert import BertConfig
from dualenc.models.dual_encoder import EncoderSpec, embed, init_tower
from dualenc.models.loading import load_encoder

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
TINY = dict(
    vocab_size=30522,
    num_hidden_layers=2,
    intermediate_size=37,
    max_position_embeddings=64,
)
TEXTS = [
    "a cat sat on the mat",
    "Mount Everest is 8,849 metres high, the highest mountain above sea level.",
    "hamlet",
    "Proteins fold into three-dimensional structures determined by their sequences.",
    "",
]
SHORT = [TEXTS[0], TEXTS[2]]  # a batch of 2, shorter than the batch of all 5


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def _st_dir(root: Path, pooling: str) -> None:
    """Turns a saved transformers base-model dir into a normalised sentence-transformers dir."""
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": pooling}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))


def _bi_dir(tmp_path_factory, minilm_path, arch: str, pooling: str) -> Path:
    torch.manual_seed(1)
    if arch == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_attention_heads=4, **TINY)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.DistilBertConfig(
            vocab_size=30522, dim=32, n_heads=4, n_layers=2, hidden_dim=37,
            max_position_embeddings=64,
        )  # fmt: skip
        model = transformers.DistilBertModel(cfg)
    out = tmp_path_factory.mktemp(f"{arch}_{pooling}")
    model.save_pretrained(out)
    _copy_tokenizer(minilm_path, out)
    _st_dir(out, pooling)
    return out


@pytest.fixture(scope="module", params=[("bert", "mean"), ("distilbert", "cls")])
def bi_dir(request, tmp_path_factory, minilm_path):
    return _bi_dir(tmp_path_factory, minilm_path, *request.param)


DEBERTA_V3 = dict(
    vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, relative_attention=True, max_relative_positions=-1, position_buckets=8,
    max_position_embeddings=64, norm_rel_ebd="layer_norm", share_att_key=True,
    pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
)  # fmt: skip


def _ce_dir(factory, minilm_path, num_labels: int, arch: str = "bert") -> Path:
    """A tiny random *ForSequenceClassification dir with the MiniLM tokenizer."""
    torch.manual_seed(2)
    if arch == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_attention_heads=4, **TINY)
        cls = transformers.BertForSequenceClassification
    elif arch == "distilbert":
        cfg = transformers.DistilBertConfig(
            vocab_size=30522, dim=32, n_heads=4, n_layers=2, hidden_dim=37,
            max_position_embeddings=64,
        )  # fmt: skip
        cls = transformers.DistilBertForSequenceClassification
    else:
        cfg = transformers.DebertaV2Config(**DEBERTA_V3)
        cls = transformers.DebertaV2ForSequenceClassification
    cfg.num_labels = num_labels
    out = factory.mktemp(f"{arch}_ce{num_labels}")
    cls(cfg).eval().save_pretrained(out)
    _copy_tokenizer(minilm_path, out)
    # transformers 5 leaves the default 2 labels out of config.json; real checkpoints name them.
    hf_cfg = json.loads((out / "config.json").read_text())
    hf_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    (out / "config.json").write_text(json.dumps(hf_cfg))
    return out


@pytest.fixture(scope="module", params=[("bert", 1), ("bert", 2), ("distilbert", 2)])
def ce_dir(request, tmp_path_factory, minilm_path):
    arch, num_labels = request.param
    return _ce_dir(tmp_path_factory, minilm_path, num_labels, arch)


@pytest.fixture(scope="module")
def ce1_dir(tmp_path_factory, minilm_path):
    return _ce_dir(tmp_path_factory, minilm_path, 1)


def _dualenc_bi(model_dir: Path, texts) -> np.ndarray:
    return encode_texts(load_encoder(model_dir), texts, batch_size=8, progress=False)


@pytest.mark.parametrize("fmt", ["onnx", "jax"])
def test_bi_encoder_export_matches_dualenc(bi_dir, fmt, tmp_path):
    out = portable.export(bi_dir, fmt, tmp_path / "out")
    run = runtime.load_onnx(out) if fmt == "onnx" else runtime.load_jax(out)
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "bi" and man["normalize"] is True and man["max_length"] == 48
    shapes = set()
    for texts in (SHORT, TEXTS):  # two (batch, length) shapes: dynamic dims
        arrays = run.tokenize(texts)
        shapes.add(arrays[0].shape)
        got = run(*arrays)
        want = _dualenc_bi(bi_dir, texts)
        np.testing.assert_allclose(got, want, atol=1e-4 if fmt == "onnx" else 1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert len(shapes) == 2 and len({s[1] for s in shapes}) == 2


@pytest.mark.parametrize("fmt", ["onnx", "jax"])
def test_cross_encoder_export_matches_dualenc(ce_dir, fmt, tmp_path):
    out = portable.export(ce_dir, fmt, tmp_path / "out")
    run = runtime.load_onnx(out) if fmt == "onnx" else runtime.load_jax(out)
    rr = load_reranker(ce_dir)
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "cross" and man["outputs"][0]["shape"] == ["batch", rr.ce.num_labels]
    names = [i["name"] for i in man["inputs"]]
    assert ("token_type_ids" in names) == (rr.ce.arch == "bert")
    shapes = set()
    for texts in (SHORT, TEXTS):  # two (batch, length) shapes: dynamic dims
        a, b = ["what is a cat"] * len(texts), texts
        arrays = run.tokenize(a, b)
        shapes.add(arrays[0].shape)
        got = run(*arrays)
        want = score_pairs(rr, a, b, batch_size=4)
        assert got.shape == (len(texts), rr.ce.num_labels)
        np.testing.assert_allclose(got, want, atol=1e-4 if fmt == "onnx" else 1e-5)
    assert len({s[1] for s in shapes}) == 2


@pytest.mark.parametrize(
    ("pooling", "act"), [("max", "gelu_new"), ("pooler", "gelu"), ("cls", "relu")]
)
def test_onnx_graph_poolings_match_embed(pooling, act):
    """Every pooling kind and GELU form, built straight from random Flax params (no files)."""
    cfg = BertConfig(
        vocab_size=99, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
        intermediate_size=24, max_position_embeddings=32, hidden_act=act,
        initializer_range=0.5,  # large activations: the GELU and softmax shapes matter
    )  # fmt: skip
    spec = EncoderSpec("bert", cfg, pooling, normalize=False)
    params = init_tower(spec, jax.random.key(0))
    model = export_onnx.build("bert", cfg, params, kind="bi", pooling=pooling)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b, length in ((2, 5), (3, 11)):
        ids = rng.integers(1, 99, (b, length))
        mask = (np.arange(length) < rng.integers(1, length + 1, (b, 1))).astype(np.int64)
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        want = embed(spec, params, ids.astype(np.int32), mask.astype(np.int32))
        np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def test_jax_export_runs_without_dualenc_model_code(tmp_path, minilm_path):
    """A fresh process runs the artifact with jax alone, and through load_jax without ever
    importing dualenc.models; its outputs match dualenc's."""
    model_dir = _bi_dir(_Factory(tmp_path), minilm_path, "bert", "mean")
    out = portable.export(model_dir, "jax", tmp_path / "jax")
    run = runtime.load_jax(out)
    arrays = run.tokenize(TEXTS)
    np.save(tmp_path / "ids.npy", arrays[0])
    np.save(tmp_path / "mask.npy", arrays[1])
    code = f"""
import sys, numpy as np, jax
ids, mask = np.load({str(tmp_path / "ids.npy")!r}), np.load({str(tmp_path / "mask.npy")!r})
exp = jax.export.deserialize(bytearray(open({str(out / "model.jax")!r}, "rb").read()))
plain = np.asarray(exp.call(ids.astype(np.int32), mask.astype(np.int32)))
assert not any(m.startswith("dualenc") for m in sys.modules), "plain jax imported dualenc"
from dualenc.export.runtime import load_jax
via = load_jax({str(out)!r}).run_texts({TEXTS!r})
bad = sorted(m for m in sys.modules if m.startswith("dualenc.models"))
assert not bad, bad
np.save({str(tmp_path / "plain.npy")!r}, plain)
np.save({str(tmp_path / "via.npy")!r}, via)
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    want = _dualenc_bi(model_dir, TEXTS)
    np.testing.assert_allclose(np.load(tmp_path / "plain.npy"), want, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "via.npy"), want, atol=1e-5)


class _Factory:
    """tmp_path_factory's `mktemp` over one test's tmp_path."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


def test_minilm_onnx_matches_dualenc_encode(minilm_path, tmp_path):
    """The real all-MiniLM-L6-v2 (mean pooling, normalised) through onnxruntime."""
    out = portable.export(minilm_path, "onnx", tmp_path / "onnx")
    run = runtime.load_onnx(out)
    want = encode_texts(load_encoder(minilm_path), TEXTS, batch_size=8, progress=False)
    got = run.run_texts(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-4)
    hello = run.run_texts(["hello world"])[0, :3]  # the reference from the field notes
    np.testing.assert_allclose(hello, [-0.0344773, 0.0310233, 0.0067350], atol=1e-5)


def test_deberta_exports_to_jax_and_onnx_names_the_arch(tmp_path, minilm_path):
    """DeBERTa-v3 goes through jax.export (same logits); ONNX refuses it by name."""
    ce = _ce_dir(_Factory(tmp_path), minilm_path, 3, arch="deberta")
    out = portable.export(ce, "jax", tmp_path / "jax")
    run, rr = runtime.load_jax(out), load_reranker(ce)
    a = ["what is a cat"] * len(TEXTS)
    want = score_pairs(rr, a, TEXTS, batch_size=8)
    np.testing.assert_allclose(run.run_texts(a, TEXTS), want, atol=1e-5)
    with pytest.raises(InputError, match="'deberta-v2'.*--format jax"):
        portable.export(ce, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ValueError, match="'deberta-v2'"):
        export_onnx.check_arch("deberta-v2")


def _cli(*args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "dualenc.export", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, ce1_dir):
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello")
    cases = [
        (["--model", str(not_model), "--format", "onnx"], "config.json"),
        (["--model", str(ce1_dir), "--format", "tflite"], "unknown format 'tflite'"),
    ]
    for i, (args, want) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = _cli(*args, "--output", str(out))
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and want in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        assert not out.exists() and not list(tmp_path.glob(f".out{i}*"))


def test_cli_writes_onnx_export(tmp_path, ce1_dir):
    r = _cli("--model", str(ce1_dir), "--format", "onnx", "--output", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
