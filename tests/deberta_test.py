"""DeBERTa-v2/v3 parity with transformers' PyTorch implementation on tiny random configs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Plain imports, never importorskip: a missing torch must fail the suite (`make setup` installs
# it), not silently drop every parity test.
import torch
import transformers

from dualenc.models import deberta
from dualenc.models.convert import params_from_state_dict, state_dict_from_params

TOL = 1e-5
BASE = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    relative_attention=True,
    max_relative_positions=-1,
    layer_norm_eps=1e-7,
)
CONFIGS = {
    # v3 layout. max_position_embeddings=16 makes a 24-token batch saturate the log buckets and
    # hit the [0, 2·span) clamp of the c2p / p2c index.
    "v3": dict(
        BASE,
        position_buckets=8,
        max_position_embeddings=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
    ),
    # Separate pos_key_proj, c2p only, absolute positions and token types, no rel LayerNorm.
    "c2p_sep": dict(
        BASE,
        position_buckets=16,
        max_position_embeddings=64,
        norm_rel_ebd="none",
        share_att_key=False,
        pos_att_type=["c2p"],
        position_biased_input=True,
        type_vocab_size=2,
    ),
    # v2 layout without buckets: clipped raw distances, p2c only, factorised embeddings.
    "p2c_nobucket": dict(
        BASE,
        position_buckets=-1,
        max_relative_positions=8,
        max_position_embeddings=64,
        norm_rel_ebd="layer_norm",
        share_att_key=False,
        pos_att_type="p2c",
        position_biased_input=False,
        type_vocab_size=0,
        embedding_size=24,
        hidden_act="gelu_new",
    ),
}
LENGTHS = (24, 19, 7)


def _batch(kwargs, seed=0):
    rng = np.random.default_rng(seed)
    shape = (len(LENGTHS), max(LENGTHS))
    mask = (np.arange(shape[1])[None, :] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids = rng.integers(1, kwargs["vocab_size"], shape).astype(np.int32) * mask
    types = rng.integers(0, max(kwargs["type_vocab_size"], 1), shape).astype(np.int32) * mask
    return ids, mask, types


def _torch_model(kwargs, seq_cls, seed=0):
    hf_cfg = transformers.DebertaV2Config(**kwargs, num_labels=3)
    cls = (
        transformers.DebertaV2ForSequenceClassification if seq_cls else transformers.DebertaV2Model
    )
    model = cls(hf_cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor random, so a mis-mapped weight cannot go unnoticed
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "LayerNorm.weight" in name else 0.1 * noise)
    return hf_cfg, model


def _torch_forward(model, ids, mask, types):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        )
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def _flax_model(hf_cfg, seq_cls, **overrides):
    cfg = dataclasses.replace(deberta.DebertaV2Config.from_hf(hf_cfg.to_dict()), **overrides)
    if seq_cls:
        return deberta.DebertaV2ForSequenceClassification(cfg, num_labels=3)
    return deberta.DebertaV2Model(cfg)


def _abstract(model, ids, mask):
    return jax.eval_shape(model.init, jax.random.key(0), ids, mask)["params"]


def _flax_forward(model, params, ids, mask, types):
    out = jax.jit(model.apply)({"params": params}, ids, mask, types)
    return np.asarray(out if isinstance(out, jax.Array) else out[0], np.float32)


@pytest.mark.parametrize(
    "size,buckets,max_pos", [(24, 8, 16), (40, 16, 64), (600, 256, 512), (130, 32, 100)]
)
def test_bucket_positions_match_transformers(size, buckets, max_pos):
    from transformers.models.deberta_v2 import modeling_deberta_v2 as hf

    x = torch.zeros(1, size, 4)
    want = hf.build_relative_position(x, x, bucket_size=buckets, max_position=max_pos)[0].numpy()
    got = deberta.build_relative_position(size, size, buckets, max_pos)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seq_cls", [False, True], ids=["model", "seq_cls"])
def test_parity_with_transformers(name, seq_cls):
    kwargs = CONFIGS[name]
    hf_cfg, torch_model = _torch_model(kwargs, seq_cls)
    ids, mask, types = _batch(kwargs)
    model = _flax_model(hf_cfg, seq_cls)
    sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    params = params_from_state_dict(sd, _abstract(model, ids, mask))
    got = _flax_forward(model, params, ids, mask, types)
    want = _torch_forward(torch_model, ids, mask, types)
    if seq_cls:
        delta = np.abs(got - want).max()
    else:
        delta = np.abs(got - want)[mask.astype(bool)].max()
    print(f"{name} {'seq_cls' if seq_cls else 'model'} max|Δ| = {delta:.2e}")
    assert delta <= TOL
    # And back: the exported state dict equals the one the weights came from.
    back = state_dict_from_params(params)
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def _perturbed_init(model, ids, mask, seed=1):
    """Random params of the model's shapes, every leaf random (biases and LayerNorms included);
    numpy-drawn so that no `init` has to compile."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = 0.1 * rng.standard_normal(leaf.shape)
        return jnp.asarray(noise + (path[-1].key == "scale"), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, _abstract(model, ids, mask))


@pytest.mark.parametrize("name", ["v3", "c2p_sep"])
def test_flax_params_load_strictly_into_transformers(name):
    kwargs = CONFIGS[name]
    hf_cfg = transformers.DebertaV2Config(**kwargs, num_labels=3)
    ids, mask, types = _batch(kwargs, seed=3)
    model = _flax_model(hf_cfg, seq_cls=True)
    params = _perturbed_init(model, ids, mask)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict_from_params(params).items()}
    torch_model = transformers.DebertaV2ForSequenceClassification(hf_cfg).eval()
    torch_model.load_state_dict(sd, strict=True)
    got = _flax_forward(model, params, ids, mask, types)
    np.testing.assert_allclose(got, _torch_forward(torch_model, ids, mask, types), atol=TOL)


@pytest.fixture(scope="module")
def v3_base():
    """The v3 base model with random params, one jitted apply reused by the tests below."""
    kwargs = CONFIGS["v3"]
    model = _flax_model(transformers.DebertaV2Config(**kwargs), seq_cls=False)
    ids, mask, _ = _batch(kwargs)
    params = _perturbed_init(model, ids, mask)
    apply = jax.jit(model.apply, static_argnames="deterministic")
    hidden, _ = apply({"params": params}, ids, mask)
    return model, params, ids, mask, apply, np.asarray(hidden)


def test_padding_does_not_leak_into_real_tokens(v3_base):
    """A row's hidden states do not depend on how much padding follows it, nor on pad ids."""
    _, params, ids, mask, apply, full = v3_base
    n = LENGTHS[1]
    alone, _ = apply({"params": params}, ids[1:2, :n], mask[1:2, :n])
    np.testing.assert_allclose(full[1, :n], alone[0], atol=TOL)
    garbage, _ = apply({"params": params}, np.where(mask == 1, ids, 7), mask)
    np.testing.assert_allclose(np.asarray(garbage)[mask == 1], full[mask == 1], atol=TOL)


def test_bfloat16_compute_runs_close_to_float32(v3_base):
    model, params, ids, mask, _, out32 = v3_base
    model16 = deberta.DebertaV2Model(dataclasses.replace(model.config, dtype="bfloat16"))
    out16, _ = jax.jit(model16.apply)({"params": params}, ids, mask)
    assert out16.dtype == jnp.bfloat16
    delta = np.abs(np.asarray(out16, np.float32) - out32)[mask == 1]
    assert np.isfinite(delta).all() and 0 < delta.max() < 0.1, delta.max()


def test_remat_keeps_params_and_grads(v3_base):
    model, params, ids, mask, _, _ = v3_base
    remat = deberta.DebertaV2Model(dataclasses.replace(model.config, remat=True))
    tree = jax.tree_util.tree_structure
    assert tree(_abstract(remat, ids, mask)) == tree(params)
    # Gradients on a one-layer model: XLA:CPU compiles backward passes slowly.
    one = dataclasses.replace(model.config, num_hidden_layers=1)
    models = [deberta.DebertaV2Model(dataclasses.replace(one, remat=r)) for r in (False, True)]
    params = _perturbed_init(models[0], ids, mask)

    def loss(p, m):
        rngs = {"dropout": jax.random.key(5)}
        hidden, _ = m.apply({"params": p}, ids, mask, deterministic=False, rngs=rngs)
        return jnp.sum((hidden * mask[..., None]) ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (l1, g1), (l2, g2) = (grad(params, m) for m in models)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g2
    )
    assert float(jnp.abs(g1["encoder"]["rel_embeddings"]["embedding"]).sum()) > 0


def test_dropout_is_used_only_when_not_deterministic(v3_base):
    _, params, ids, mask, apply, full = v3_base
    rngs = {"dropout": jax.random.key(0)}
    noisy, _ = apply({"params": params}, ids, mask, deterministic=False, rngs=rngs)
    assert np.isfinite(np.asarray(noisy)).all() and not np.allclose(noisy, full)


def test_config_round_trips_through_hf():
    v3_json = {  # the deberta-v3-base config.json, with the legacy 'p2c|c2p' string
        "model_type": "deberta-v2",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "relative_attention": True,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": "p2c|c2p",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "type_vocab_size": 0,
        "vocab_size": 128100,
    }
    cfg = deberta.DebertaV2Config.from_hf(v3_json)
    assert cfg.pos_att_type == ("p2c", "c2p") and cfg.pooler_hidden_size == 768
    assert cfg.att_span == 256 and cfg.rel_max_position == 512
    assert deberta.DebertaV2Config.from_hf(cfg.to_hf()) == cfg
    hf = transformers.DebertaV2Config(**cfg.to_hf())
    assert deberta.DebertaV2Config.from_hf(hf.to_dict()) == cfg
    assert hf.pos_att_type == ["p2c", "c2p"] and hf.position_buckets == 256


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"conv_kernel_size": 3}, "ConvLayer"),
        ({"hidden_act": "nope"}, "activation"),
        ({"pos_att_type": "p2p"}, "pos_att_type"),
        ({"model_type": "deberta"}, "model_type"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "multiple"),
    ],
)
def test_config_rejects_what_it_cannot_run(bad, match):
    with pytest.raises(ValueError, match=match):
        deberta.DebertaV2Config.from_hf({**CONFIGS["v3"], **bad})
