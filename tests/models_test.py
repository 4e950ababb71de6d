"""Models: exact parity with transformers (PyTorch, CPU) on tiny random configs, the weight
converter both ways, pooling math, dual / cross encoders, dropout, bf16 and remat."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Plain imports, never importorskip: `make setup` installs the CPU torch stack, and a missing
# torch must fail the suite rather than silently drop every parity test.
import torch
import transformers

from dualenc.models import bert, convert, distilbert, pooling, registry
from dualenc.models import dual_encoder as de
from dualenc.models.cross_encoder import CrossEncoder

TOL = 1e-5
TINY_BERT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
)
TINY_DISTIL = dict(
    vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64
)


def _batch():
    """A padded batch: lengths 9, 5, 2; segment ids on the second half."""
    rs = np.random.RandomState(0)
    ids = rs.randint(1, 100, (3, 9)).astype(np.int32)
    mask = np.ones((3, 9), np.int32)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    tt = np.zeros_like(ids)
    tt[:, 4:] = 1
    return ids, mask, tt * mask


def _randomise(model, seed=0):
    """Non-trivial weights everywhere (HF init zeroes biases, which would hide bias bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "LayerNorm" in name or "layer_norm" in name else 0.2 * noise)
    return model.eval()


def _torch_out(model, ids, mask, tt=None):
    kw = {} if tt is None else {"token_type_ids": torch.tensor(tt, dtype=torch.long)}
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kw)


def _sd(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.fixture(scope="module")
def hf_bert_cfg():
    return transformers.BertConfig(**TINY_BERT, attn_implementation="eager")


@pytest.fixture(scope="module")
def bert_cfg(hf_bert_cfg):
    return bert.BertConfig.from_hf(hf_bert_cfg.to_dict())


@pytest.fixture(scope="module")
def bert_params(hf_bert_cfg, bert_cfg):
    """(torch BertModel, our params converted from its state dict)."""
    torch.manual_seed(0)
    tm = _randomise(transformers.BertModel(hf_bert_cfg))
    abstract = registry.init_abstract(registry.get_arch("bert"), bert_cfg)
    return tm, convert.params_from_state_dict(_sd(tm), abstract)


# ----------------------------------------------------------------------------- BERT parity


def test_bert_model_matches_transformers(bert_cfg, bert_params):
    tm, params = bert_params
    ids, mask, tt = _batch()
    ref = _torch_out(tm, ids, mask, tt)
    hidden, pooled = bert.BertModel(bert_cfg).apply({"params": params}, ids, mask, tt)
    assert hidden.shape == (3, 9, 32) and pooled.shape == (3, 32)
    # All positions: HF also computes padded query rows over the unpadded keys.
    assert _max_diff(hidden, ref.last_hidden_state) <= TOL
    assert _max_diff(pooled, ref.pooler_output) <= TOL
    # Token types matter (so the check above exercised them).
    other, _ = bert.BertModel(bert_cfg).apply({"params": params}, ids, mask, None)
    assert _max_diff(other, hidden) > 1e-3


def test_bert_seq_cls_matches_transformers_and_round_trips(hf_bert_cfg, bert_cfg):
    torch.manual_seed(1)
    tm = _randomise(
        transformers.BertForSequenceClassification(
            hf_bert_cfg.__class__(**hf_bert_cfg.to_dict(), num_labels=3)
        ),
        seed=1,
    )
    ce = CrossEncoder("bert", bert_cfg, num_labels=3)
    params = convert.params_from_state_dict(_sd(tm), ce.abstract_params())
    assert set(params) == {"bert", "classifier"}
    ids, mask, tt = _batch()
    ref = _torch_out(tm, ids, mask, tt).logits
    logits = ce.score(params, ids, mask, tt)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    assert _max_diff(logits, ref) <= TOL
    # params → state dict → a fresh torch model (strict) gives the same logits.
    fresh = transformers.BertForSequenceClassification(tm.config).eval()
    sd = convert.state_dict_from_params(params)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    assert _max_diff(_torch_out(fresh, ids, mask, tt).logits, ref) == 0.0


def test_bert_base_round_trip_strict(hf_bert_cfg, bert_params):
    tm, params = bert_params
    sd = convert.state_dict_from_params(params)
    fresh = transformers.BertModel(hf_bert_cfg)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), v.numpy(), err_msg=k)
    # With a prefix, names are those of a `*For*` model's base.
    assert all(k.startswith("bert.") for k in convert.state_dict_from_params(params, prefix="bert"))


def test_config_round_trips_through_transformers(bert_cfg):
    hf = transformers.BertConfig(**bert_cfg.to_hf())
    assert bert.BertConfig.from_hf(hf.to_dict()) == bert_cfg
    dcfg = distilbert.DistilBertConfig(**TINY_DISTIL)
    hf_d = transformers.DistilBertConfig(**dcfg.to_hf())
    assert distilbert.DistilBertConfig.from_hf(hf_d.to_dict()) == dcfg
    with pytest.raises(ValueError, match="model_type 'bert'"):
        bert.BertConfig.from_hf({"model_type": "distilbert"})
    with pytest.raises(ValueError, match="not a multiple"):
        bert.BertConfig(hidden_size=30, num_attention_heads=4)


# ----------------------------------------------------------------------------- DistilBERT parity


@pytest.mark.parametrize("sinusoidal", [False, True])
def test_distilbert_matches_transformers(sinusoidal):
    hf_cfg = transformers.DistilBertConfig(
        **TINY_DISTIL, sinusoidal_pos_embds=sinusoidal, num_labels=2, attn_implementation="eager"
    )
    cfg = distilbert.DistilBertConfig.from_hf(hf_cfg.to_dict())
    assert cfg.sinusoidal_pos_embds is sinusoidal
    torch.manual_seed(2)
    tm = transformers.DistilBertForSequenceClassification(hf_cfg)
    hf_table = tm.distilbert.embeddings.position_embeddings.weight.detach().clone()
    tm = _randomise(tm, seed=2)
    if sinusoidal:  # keep HF's own fixed table: ours must initialise to the same one
        tm.distilbert.embeddings.position_embeddings.weight.data.copy_(hf_table)
        fixed = distilbert.FixedPositions(cfg).init(jax.random.key(0), 9)["params"]
        assert hf_table[0, :2].tolist() == [0.0, 1.0]  # sin(0), cos(0): HF made it sinusoidal
        assert _max_diff(fixed["embedding"], hf_table) <= 1e-6
    ids, mask, _ = _batch()
    ce = CrossEncoder("distilbert", cfg, num_labels=2)
    params = convert.params_from_state_dict(_sd(tm), ce.abstract_params())
    ref = _torch_out(tm, ids, mask)
    assert _max_diff(ce.score(params, ids, mask), ref.logits) <= TOL
    # The base model alone, from the same (prefixed) checkpoint: the head is ignored.
    abstract = registry.init_abstract(registry.get_arch("distilbert"), cfg)
    base = convert.params_from_state_dict(_sd(tm), abstract)
    hidden, pooled = distilbert.DistilBertModel(cfg).apply({"params": base}, ids, mask)
    ref_hidden = _torch_out(tm.distilbert, ids, mask).last_hidden_state
    assert pooled is None and _max_diff(hidden, ref_hidden) <= TOL
    fresh = transformers.DistilBertForSequenceClassification(hf_cfg)
    sd = convert.state_dict_from_params(params)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)


# ----------------------------------------------------------------------------- converter


def test_converter_names_every_bad_tensor(bert_cfg, bert_params):
    tm, _ = bert_params
    abstract = registry.init_abstract(registry.get_arch("bert"), bert_cfg)
    sd = _sd(tm)
    assert "embeddings.position_ids" not in sd  # non-persistent in transformers 5 ...
    sd["embeddings.position_ids"] = np.arange(64)[None]  # ... but old checkpoints carry it
    del sd["encoder.layer.1.output.dense.bias"]
    del sd["pooler.dense.weight"]
    sd["encoder.layer.2.output.dense.bias"] = np.zeros(32, np.float32)
    sd["encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 31), np.float32)
    with pytest.raises(convert.WeightsError) as err:
        convert.params_from_state_dict(sd, abstract)
    msg = str(err.value)
    for name in (
        "encoder.layer.1.output.dense.bias",
        "pooler.dense.weight",
        "encoder.layer.2.output.dense.bias",
        "encoder.layer.0.attention.self.key.weight expected (32, 32) got (32, 31)",
    ):
        assert name in msg
    assert "position_ids" not in msg
    assert err.value.missing == ["encoder.layer.1.output.dense.bias", "pooler.dense.weight"]
    assert err.value.unexpected == ["encoder.layer.2.output.dense.bias"]
    assert isinstance(err.value, ValueError)


def test_converter_prefixes_and_fill(bert_cfg, bert_params):
    tm, params = bert_params
    ce = CrossEncoder("bert", bert_cfg, num_labels=1)
    abstract = ce.abstract_params()
    # A bare base checkpoint lacks the head: named, unless a fill is given.
    with pytest.raises(convert.WeightsError, match="classifier.weight") as err:
        convert.params_from_state_dict(_sd(tm), abstract)
    assert err.value.missing == ["classifier.bias", "classifier.weight"]
    head = {"classifier": {"kernel": np.ones((32, 1), np.float32), "bias": np.zeros(1, np.float32)}}
    loaded = convert.params_from_state_dict(_sd(tm), abstract, fill_missing=head)
    np.testing.assert_array_equal(loaded["classifier"]["kernel"], head["classifier"]["kernel"])
    np.testing.assert_array_equal(
        loaded["bert"]["pooler"]["dense"]["kernel"], params["pooler"]["dense"]["kernel"]
    )
    # from_base: the tower's leaves under 'bert', a fresh head of the right shape.
    from_base = ce.from_base(params, jax.random.key(0))
    assert jax.tree.all(jax.tree.map(np.array_equal, from_base["bert"], loaded["bert"]))
    assert from_base["classifier"]["kernel"].shape == (32, 1)
    # Explicit prefix: strip it, ignore the rest; gamma/beta LayerNorm names are accepted.
    sd = {"bert." + k: v for k, v in _sd(tm).items()}
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in sd.items()}
    sd["cls.predictions.bias"] = np.zeros(100, np.float32)
    base_abs = registry.init_abstract(registry.get_arch("bert"), bert_cfg)
    again = convert.params_from_state_dict(sd, base_abs, prefix="bert.")
    assert jax.tree.all(jax.tree.map(np.array_equal, again, params))


def test_unknown_architecture():
    with pytest.raises(ValueError, match=r"unsupported architecture 'gpt2'.*'bert'"):
        registry.get_arch("gpt2")
    with pytest.raises(ValueError, match="gpt2"):
        de.EncoderSpec("gpt2", None)
    spec = registry.get_arch("deberta-v2")  # lazily imported
    assert spec.hf_prefix == "deberta" and spec.config_cls.__name__ == "DebertaV2Config"


# ----------------------------------------------------------------------------- pooling


def test_pooling_math():
    hidden = jnp.array(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]]
    )  # (2, 3, 2)
    mask = jnp.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(pooling.pool(hidden, mask, "mean"), [[2.0, 3.0], [7.0, 8.0]])
    np.testing.assert_allclose(pooling.pool(hidden, mask, "cls"), [[1.0, 2.0], [5.0, 6.0]])
    np.testing.assert_allclose(pooling.pool(hidden, mask, "max"), [[3.0, 4.0], [9.0, 10.0]])
    pooled = jnp.ones((2, 2))
    np.testing.assert_array_equal(pooling.pool(hidden, mask, "pooler", pooled), pooled)
    with pytest.raises(ValueError, match="pooled is None"):
        pooling.pool(hidden, mask, "pooler")
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling.pool(hidden, mask, "sum")
    # An all-padding row gives zeros, not NaN (sentence-transformers clamps the count at 1e-9).
    np.testing.assert_array_equal(pooling.pool(hidden, jnp.zeros_like(mask), "mean"), 0.0)
    x = jnp.array([[3.0, 4.0], [0.0, 0.0], [1e-13, 0.0]])
    ref = torch.nn.functional.normalize(torch.tensor(np.asarray(x)), dim=-1).numpy()
    np.testing.assert_allclose(pooling.l2_normalize(x), ref, rtol=1e-6)
    np.testing.assert_allclose(pooling.l2_normalize(x)[0], [0.6, 0.8], rtol=1e-6)


# ----------------------------------------------------------------------------- dual encoder


def test_dual_encoder_shared_and_separate(bert_cfg, bert_params):
    _, tower = bert_params
    spec = de.EncoderSpec("bert", bert_cfg, pooling="mean", normalize=True)
    ids, mask, _ = _batch()
    shared = de.init_dual_params(spec, jax.random.key(0), shared=True, tower_params=tower)
    assert set(shared) == {"encoder"}
    q = de.embed_queries(spec, shared, ids, mask)
    p = de.embed_passages(spec, shared, ids, mask)
    assert q.shape == (3, 32) and q.dtype == jnp.float32
    np.testing.assert_array_equal(q, p)
    np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), 1.0, rtol=1e-6)
    # Leading batch dims are flattened and restored: (B, n, L) → (B, n, D).
    p3 = de.embed_passages(
        spec, shared, np.stack([ids, ids[::-1]], 1), np.stack([mask, mask[::-1]], 1)
    )
    assert p3.shape == (3, 2, 32)
    np.testing.assert_allclose(p3[:, 0], p, atol=1e-6)
    np.testing.assert_allclose(p3[:, 1], p[::-1], atol=1e-6)
    separate = de.init_dual_params(spec, jax.random.key(0), shared=False, tower_params=tower)
    assert set(separate) == {"q_encoder", "p_encoder"}
    separate["p_encoder"]["pooler"]["dense"]["bias"] += 1.0  # towers are independent copies
    assert not np.array_equal(
        tower["pooler"]["dense"]["bias"], separate["p_encoder"]["pooler"]["dense"]["bias"]
    )
    separate["p_encoder"]["embeddings"]["word_embeddings"]["embedding"] *= 2.0
    q2 = de.embed_queries(spec, separate, ids, mask)
    p2 = de.embed_passages(spec, separate, ids, mask)
    np.testing.assert_array_equal(q2, q)
    assert _max_diff(q2, p2) > 1e-3
    # Random towers: the same layout as the pretrained one (shapes only: no compute).
    rand = jax.eval_shape(lambda k: de.init_dual_params(spec, k, shared=False), jax.random.key(0))
    assert jax.tree.map(lambda x: x.shape, rand["q_encoder"]) == jax.tree.map(np.shape, tower)
    sims = de.similarity(q, p2, "dot")
    np.testing.assert_allclose(sims, np.asarray(q) @ np.asarray(p2).T, rtol=1e-5)
    np.testing.assert_allclose(de.similarity(2 * q, p, "cos"), de.similarity(q, p), atol=1e-6)


def test_dropout_only_when_not_deterministic(bert_cfg, bert_params):
    _, tower = bert_params
    spec = de.EncoderSpec("bert", bert_cfg, pooling="cls")
    ids, mask, _ = _batch()
    base = de.embed(spec, tower, ids, mask)
    np.testing.assert_array_equal(base, de.embed(spec, tower, ids, mask, deterministic=True))
    k1, k2 = jax.random.split(jax.random.key(3))
    d1 = de.embed(spec, tower, ids, mask, deterministic=False, rngs=k1)
    d1b = de.embed(spec, tower, ids, mask, deterministic=False, rngs={"dropout": k1})
    d2 = de.embed(spec, tower, ids, mask, deterministic=False, rngs=k2)
    np.testing.assert_array_equal(d1, d1b)
    assert _max_diff(d1, base) > 1e-3 and _max_diff(d1, d2) > 1e-3


# ----------------------------------------------------------------------------- bf16, remat


def test_bf16_compute_stays_close(bert_cfg, bert_params):
    _, params = bert_params
    ids, mask, tt = _batch()
    ref, _ = bert.BertModel(bert_cfg).apply({"params": params}, ids, mask, tt)
    cfg16 = dataclasses.replace(bert_cfg, dtype="bfloat16")
    out, pooled = bert.BertModel(cfg16).apply({"params": params}, ids, mask, tt)
    assert out.dtype == jnp.bfloat16 and pooled.dtype == jnp.bfloat16
    assert _max_diff(out, ref) < 0.1 * float(jnp.max(jnp.abs(ref)))
    # bf16 params as well: init produces bf16 leaves.
    cfg_p16 = dataclasses.replace(cfg16, param_dtype="bfloat16")
    abstract = registry.init_abstract(registry.get_arch("bert"), cfg_p16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(abstract))


def test_remat_same_outputs_and_gradients(bert_cfg, bert_params):
    _, params = bert_params
    ids, mask, tt = _batch()
    cfg = dataclasses.replace(bert_cfg, num_hidden_layers=1)  # one block: one small compile
    cfg_remat = dataclasses.replace(cfg, remat=True)

    def loss(c, p):
        hidden, pooled = bert.BertModel(c).apply({"params": p}, ids, mask, tt)
        return jnp.sum(hidden**2) + jnp.sum(pooled)

    def jaxpr(c):
        return str(jax.make_jaxpr(functools.partial(loss, c))(params))

    assert "remat" in jaxpr(cfg_remat) and "remat" not in jaxpr(cfg)  # jax.checkpoint's primitive
    both = jax.jit(
        lambda p: [jax.value_and_grad(functools.partial(loss, c))(p) for c in (cfg, cfg_remat)]
    )
    (v0, g0), (v1, g1) = both(params)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g0, g1)
    assert max(jax.tree.leaves(diffs)) <= 1e-5
    assert float(jnp.max(jnp.abs(g0["encoder"]["layer"]["0"]["output"]["dense"]["kernel"]))) > 0


# ----------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_minilm_real_weights(minilm_path):
    from safetensors.numpy import load_file

    sd = load_file(str(minilm_path / "model.safetensors"))
    assert len(sd) == 104 and "embeddings.position_ids" in sd
    cfg = bert.BertConfig.from_hf(json.loads((minilm_path / "config.json").read_text()))
    params = convert.params_from_state_dict(
        sd, registry.init_abstract(registry.get_arch("bert"), cfg)
    )
    spec = de.EncoderSpec("bert", cfg, pooling="mean", normalize=True)
    ids = np.array([[101, 7592, 2088, 102]], np.int32)
    emb = de.embed(spec, params, ids, np.ones_like(ids))
    want = [-0.0344773, 0.0310233, 0.0067350, 0.0261090, -0.0393620]
    np.testing.assert_allclose(emb[0, :5], want, atol=2e-6)
