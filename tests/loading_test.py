"""Weights in and out: parity with transformers / sentence-transformers, round trips, errors."""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dualenc.inference.encode import encode_texts
from dualenc.io import InputError
from dualenc.models import loading, saving
from dualenc.models.convert import WeightsError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
)

_LONG = (
    "The mitochondrion is the powerhouse of the cell, producing adenosine triphosphate through "
    "oxidative phosphorylation, and its dysfunction has been implicated in neurodegenerative "
    "disease, ageing, metabolic syndrome and several rare inherited disorders. "
)


def varied_texts() -> list[str]:
    """≥ 64 texts: short, empty-ish, unicode, numbers, code, and several > 256 tokens."""
    base = [
        "hello world",
        "",
        " ",
        ".",
        "?!",
        "a",
        "The cat sat on the mat.",
        "What is the capital of France?",
        "Paris is the capital and largest city of France.",
        "Café naïve résumé façade coöperate",
        "日本語のテキストも埋め込めます。",
        "Привет, мир!",
        "مرحبا بالعالم",
        "emoji 🙂👍🏽🚀 and symbols ∑∫√π ≠ ≤",
        "Ünïcödé ÅÄÖ ß ẞ ø œ æ",
        "def f(x):\n    return x ** 2  # code",
        "SELECT * FROM users WHERE id = 42;",
        "3.14159 2.71828 1.41421 6.02214076e23",
        "COVID-19 vaccines reduce hospitalisation.",
        "BRCA1 mutations increase breast cancer risk",
        "   leading and trailing spaces   ",
        "tab\tseparated\tvalues",
        "new\nline\nseparated",
        "ALL CAPS SENTENCE HERE",
        "https://example.org/path?query=1&x=y",
        "user@example.com wrote: lol",
        "a " * 100,
        "word " * 20,
        "Ceci n'est pas une pipe.",
        "Der schnelle braune Fuchs.",
    ]
    topics = [
        "protein folding",
        "climate policy",
        "football tactics",
        "jazz harmony",
        "tax law",
        "quantum error correction",
        "bread baking",
        "medieval trade routes",
    ]
    mids = [
        f"A short note about {t}, written for a general audience, number {i}."
        for i, t in enumerate(topics * 4)
    ]
    longs = [(f"Chapter {i} on {t}. " + _LONG * (2 + i)) for i, t in enumerate(topics)]
    texts = base + mids + longs
    assert len(texts) >= 64
    return texts


def make_tiny_bert_dir(path, minilm_path, seed: int = 0):
    """A random tiny BERT saved by transformers (config.json + model.safetensors) + tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=30522, **TINY)).eval()
    model.save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_path / name, path / name)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_path):
    return make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert"), minilm_path)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _torch_hidden(model_dir, texts, max_length=128):
    """last_hidden_state (B, L, H) and attention mask from transformers, as numpy."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    return out.numpy(), batch["attention_mask"].numpy()


# ----------------------------------------------------------------------------- tiny models


def test_tiny_hf_dir_matches_transformers_cls(tiny_dir):
    enc = loading.load_encoder(tiny_dir)
    assert (enc.arch, enc.pooling, enc.normalize, enc.max_length) == ("bert", "cls", False, 128)
    texts = varied_texts()[:24]
    ours = encode_texts(enc, texts, batch_size=8, progress=False)
    hidden, _ = _torch_hidden(tiny_dir, texts)
    np.testing.assert_allclose(ours, hidden[:, 0], atol=1e-5, rtol=0)


def test_pooling_override_mean(tiny_dir):
    enc = loading.load_encoder(tiny_dir, pooling="mean", normalize=True)
    texts = ["a short one", "a somewhat longer sentence with more tokens in it", "x"]
    ours = encode_texts(enc, texts, batch_size=4, progress=False)
    hidden, mask = _torch_hidden(tiny_dir, texts)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(ours, mean, atol=1e-5, rtol=0)


def test_tiny_sentence_transformers_export_round_trip(tiny_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = loading.load_encoder(tiny_dir, pooling="mean", normalize=True, max_length=64)
    out = saving.save_sentence_transformers(enc, tmp_path / "st")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "2_Normalize",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ):
        assert (out / name).exists(), name
    texts = varied_texts()
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 64
    ref = st.encode(texts, batch_size=16)
    ours = encode_texts(enc, texts, batch_size=16, progress=False)
    assert np.abs(ours - ref).max() <= 1e-5
    back = loading.load_encoder(out)
    assert back.weights_hash() == enc.weights_hash()
    assert (back.pooling, back.normalize, back.max_length) == ("mean", True, 64)


def test_tiny_save_hf_loads_in_automodel(tiny_dir, tmp_path):
    from transformers import AutoModel

    enc = loading.load_encoder(tiny_dir, pooling="mean")
    out = saving.save_hf(enc, tmp_path / "hf")
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    texts = ["one sentence", "and another, longer sentence"]
    np.testing.assert_allclose(
        _torch_hidden(out, texts)[0], _torch_hidden(tiny_dir, texts)[0], atol=1e-6
    )
    back = loading.load_encoder(out)
    assert back.weights_hash() == enc.weights_hash()
    assert (back.pooling, back.normalize) == ("mean", False)


def test_pooler_pooling_cannot_export_to_sentence_transformers(tiny_dir, tmp_path):
    enc = loading.load_encoder(tiny_dir, pooling="pooler")
    with pytest.raises(ValueError, match="pooler"):
        saving.save_sentence_transformers(enc, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_pytorch_bin_checkpoint(tiny_dir, tmp_path):
    import torch

    d = _copy(tiny_dir, tmp_path / "bin")
    sd = {k: torch.from_numpy(v.copy()) for k, v in load_file(str(d / "model.safetensors")).items()}
    torch.save(sd, str(d / "pytorch_model.bin"))
    (d / "model.safetensors").unlink()
    assert loading.load_encoder(d).weights_hash() == loading.load_encoder(tiny_dir).weights_hash()


def test_encoder_from_params_and_weights_hash(tiny_dir):
    import jax

    enc = loading.load_encoder(tiny_dir)
    h = enc.weights_hash()
    assert len(h) == 16 and h == loading.load_encoder(tiny_dir).weights_hash()
    new = loading.encoder_from_params(enc, jax.tree.map(lambda x: x * 1.5, enc.params))
    assert new.weights_hash() != h and enc.weights_hash() == h
    assert new.tokenizer is enc.tokenizer and new.spec == enc.spec
    a, b = (encode_texts(e, ["same text"], progress=False) for e in (enc, new))
    assert np.abs(a - b).max() > 1e-3


def _st_layout(d, pooling_cfg, *, normalize_folder: bool):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg))
    if normalize_folder:
        (d / "2_Normalize").mkdir()
    return d


def test_sentence_transformers_layout_new_pooling_key_and_absent_normalize(tiny_dir, tmp_path):
    d = _st_layout(
        _copy(tiny_dir, tmp_path / "st"),
        {"embedding_dimension": 32, "pooling_mode": "cls"},
        normalize_folder=False,
    )
    enc = loading.load_encoder(d)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", True, 128)
    emb = encode_texts(enc, ["check the norm"], progress=False)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "cfg, mode",
    [
        ({"pooling_mode": "weightedmean"}, "weightedmean"),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "mean+max"),
        ({"pooling_mode": "lasttoken"}, "lasttoken"),
    ],
)
def test_unsupported_pooling_mode(tiny_dir, tmp_path, cfg, mode):
    d = _st_layout(_copy(tiny_dir, tmp_path / "st"), cfg, normalize_folder=True)
    with pytest.raises(InputError, match=re.escape(f"unsupported pooling mode '{mode}'")) as e:
        loading.load_encoder(d)
    assert "1_Pooling" in str(e.value)


def test_unsupported_module(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "st")
    (d / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense",
                },
            ]
        )
    )
    with pytest.raises(InputError, match="sentence_transformers.models.Dense"):
        loading.load_encoder(d)


# ----------------------------------------------------------------------------- bad input


def test_missing_dir(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        loading.load_encoder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_file_instead_of_dir(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="expected a model directory"):
        loading.load_encoder(tmp_path / "f.txt")


def test_hub_id_unreachable(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError, match="neither a local directory nor reachable") as e:
        loading.load_encoder("some-org/some-model")
    assert "some-org/some-model" in str(e.value)


def test_no_config(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(InputError, match="missing config.json"):
        loading.load_encoder(d)


def test_unsupported_architecture(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(InputError, match="gpt2") as e:
        loading.load_encoder(d)
    assert "unsupported architecture" in str(e.value) and "config.json" in str(e.value)


def test_no_weights(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        loading.load_encoder(d)


def test_missing_tokenizer(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    for name in TOKENIZER_FILES:
        (d / name).unlink()
    with pytest.raises(InputError, match="tokenizer"):
        loading.load_encoder(d)


QUERY = "encoder.layer.1.attention.self.query.weight"


@pytest.mark.parametrize(
    "edit, words",
    [
        ("remove", ["missing", QUERY]),
        ("extra", ["unexpected", "encoder.layer.9.extra.weight"]),
        ("reshape", ["mis-shaped", QUERY, "(32, 32)", "(32, 31)"]),
    ],
)
def test_bad_tensors_are_named(tiny_dir, tmp_path, edit, words):
    d = _copy(tiny_dir, tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    if edit == "remove":
        del sd[QUERY]
    elif edit == "extra":
        sd["encoder.layer.9.extra.weight"] = np.zeros((3,), np.float32)
    else:
        sd[QUERY] = sd[QUERY][:, :31].copy()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError) as e:
        loading.load_encoder(d)
    for w in words:
        assert w in str(e.value)
    assert str(d) in str(e.value)


# ----------------------------------------------------------------------------- real MiniLM


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return loading.load_encoder(minilm_path)


@pytest.fixture(scope="module")
def st_reference(minilm_path):
    from sentence_transformers import SentenceTransformer

    texts = varied_texts()
    return texts, SentenceTransformer(str(minilm_path), device="cpu").encode(texts, batch_size=16)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, st_reference):
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    texts, ref = st_reference
    lens = [len(minilm.tokenizer.encode(t).ids) for t in texts]
    assert sum(n > 256 for n in lens) >= 4  # truncation is exercised
    ours = encode_texts(minilm, texts, batch_size=16, progress=False)
    assert ours.shape == ref.shape == (len(texts), 384)
    print(f"max |dualenc - sentence-transformers| = {np.abs(ours - ref).max():.3g}")
    assert np.abs(ours - ref).max() <= 1e-5
    hello = encode_texts(minilm, ["hello world"], progress=False)[0, :5]
    np.testing.assert_allclose(
        hello, [-0.0344773, 0.0310233, 0.0067350, 0.0261090, -0.0393620], atol=1e-6
    )


@pytest.mark.slow
def test_minilm_sentence_transformers_export(minilm, st_reference, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = saving.save_sentence_transformers(minilm, tmp_path / "export")
    texts, ref = st_reference
    got = SentenceTransformer(str(out), device="cpu").encode(texts, batch_size=16)
    assert np.abs(got - ref).max() <= 1e-5
    back = loading.load_encoder(out)
    assert back.weights_hash() == minilm.weights_hash()
    assert (back.pooling, back.normalize, back.max_length) == ("mean", True, 256)


@pytest.mark.slow
def test_minilm_save_hf_automodel(minilm, tmp_path):
    from transformers import AutoModel

    out = saving.save_hf(minilm, tmp_path / "hf")
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert loading.load_encoder(out).weights_hash() == minilm.weights_hash()
