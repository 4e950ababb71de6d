"""Sequence packing: the packer's layout, and packed == unpacked embeddings and gradients."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dualenc.biencoder import model as bi_model
from dualenc.biencoder import step as bi_step
from dualenc.biencoder import task as bi_task
from dualenc.inference import encode, packing
from dualenc.models import dual_encoder, loading
from dualenc.models.bert import BertConfig
from dualenc.models.deberta import DebertaV2Config
from dualenc.models.distilbert import DistilBertConfig
from dualenc.training import state as state_lib

TOL = 1e-5
TINY_BERT = BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
)
TINY_DISTIL = DistilBertConfig(
    vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128
)


def random_seqs(n=23, seed=0, lengths=(2, 3, 7, 15, 40, 61)):
    """Token-id lists of very different lengths ([CLS]=1 ... [SEP]=2 framing, pad 0)."""
    rng = np.random.default_rng(seed)
    lens = rng.choice(lengths, size=n)
    return [[1, *rng.integers(3, 100, size=k - 2).tolist(), 2] for k in lens]


def padded(seqs):
    length = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), length), np.int32)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def packed_embed(spec, params, seqs, row_length=64, max_segments=6):
    p = packing.pack(seqs, row_length, max_segments)
    emb = dual_encoder.embed_packed(
        spec, params, p.input_ids, p.segment_ids, p.position_ids, num_segments=max_segments
    )
    return packing.gather_segments(emb, p.row, p.segment)


def test_pack_layout():
    seqs = random_seqs(41, seed=3)
    p = packing.pack(seqs, row_length=64, max_segments=5, pad=0)
    assert p.input_ids.shape == p.segment_ids.shape == p.position_ids.shape
    assert p.input_ids.shape[1] == 64
    assert np.bincount(p.row).max() <= 5  # segment cap per row
    seen = set()
    for i, s in enumerate(seqs):
        r, k = p.row[i], p.segment[i] + 1
        where = np.flatnonzero(p.segment_ids[r] == k)
        assert where.tolist() == list(range(where[0], where[0] + len(s)))  # contiguous
        assert p.input_ids[r, where].tolist() == s
        assert p.position_ids[r, where].tolist() == list(range(len(s)))
        seen.add((r, k))
    assert len(seen) == len(seqs)  # no two texts share a segment
    real = sum(len(s) for s in seqs)
    assert p.padding_fraction == pytest.approx(1 - real / p.input_ids.size)
    # First-fit decreasing fills rows: no two rows could have been merged.
    fill = np.sum(p.segment_ids > 0, axis=1)
    counts = np.bincount(p.row)
    assert min(fill) > 0 and all(
        fill[a] + fill[b] > 64 or counts[a] + counts[b] > 5
        for a in range(len(fill))
        for b in range(a + 1, len(fill))
    )


def test_pack_rejects_too_long_text():
    with pytest.raises(ValueError, match="text 1 has 9 tokens > row_length 8"):
        packing.pack([[1, 2], list(range(9))], row_length=8)


def test_packed_part_splits_rows_and_tokenises_only_its_own():
    """Parts of one packing (laid out from lengths) concatenate to the whole; each part asks
    for its own texts only; a length that disagrees with the tokens is refused."""
    seqs = random_seqs(41, seed=5)
    lengths = np.array([len(s) for s in seqs])
    kw = dict(row_length=64, max_segments=5, rows_multiple=4)
    whole = packing.packed_part(lengths, lambda sel: [seqs[i] for i in sel], **kw)
    asked, parts = [], []
    for part in range(2):
        enc = lambda sel: asked.append(sel.tolist()) or [seqs[i] for i in sel]  # noqa: E731
        parts.append(packing.packed_part(lengths, enc, part=part, parts=2, **kw))
    for j in range(2):  # input_ids, segment_ids
        np.testing.assert_array_equal(np.concatenate([p[j] for p in parts]), whole[j])
    for j in (2, 3):  # every text's row and segment: global, the same in each part
        np.testing.assert_array_equal(parts[0][j], whole[j])
        np.testing.assert_array_equal(parts[1][j], whole[j])
    assert sorted(asked[0] + asked[1]) == list(range(41)) and asked[0] and asked[1]
    p = packing.pack(seqs, 64, 5)
    np.testing.assert_array_equal(whole[0][: len(p.input_ids)], p.input_ids)
    with pytest.raises(ValueError, match=r"text 0 has \d+ tokens, its length says"):
        packing.packed_part(lengths, lambda sel: [seqs[i][:-1] for i in sel], **kw)


@pytest.mark.parametrize("pool", ["mean", "cls", "max", "pooler"])
def test_packed_equals_unpacked_bert(pool):
    spec = dual_encoder.EncoderSpec("bert", TINY_BERT, pooling=pool, normalize=pool == "mean")
    params = dual_encoder.init_tower(spec, jax.random.key(0))
    seqs = random_seqs()
    ids, mask = padded(seqs)
    ref = dual_encoder.embed(spec, params, ids, mask)
    got = packed_embed(spec, params, seqs)
    assert float(jnp.abs(ref).max()) > 1e-3  # not trivially zero
    assert float(jnp.abs(got - ref).max()) <= TOL


@pytest.mark.parametrize("sinusoidal", [False, True])
def test_packed_equals_unpacked_distilbert(sinusoidal):
    cfg = dataclasses.replace(TINY_DISTIL, sinusoidal_pos_embds=sinusoidal)
    spec = dual_encoder.EncoderSpec("distilbert", cfg, pooling="mean")
    params = dual_encoder.init_tower(spec, jax.random.key(1))
    seqs = random_seqs(seed=1)
    ref = dual_encoder.embed(spec, params, *padded(seqs))
    assert float(jnp.abs(packed_embed(spec, params, seqs) - ref).max()) <= TOL


def test_deberta_refuses_packing():
    cfg = DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4
    )
    spec = dual_encoder.EncoderSpec("deberta-v2", cfg)
    ids = jnp.ones((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="packing supports"):
        dual_encoder.embed_packed(spec, {}, ids, ids, num_segments=2)


def test_contrastive_gradients_equal():
    """In-batch softmax loss over packed q/p rows: same loss and same parameter gradients."""
    spec = dual_encoder.EncoderSpec("bert", TINY_BERT, pooling="mean", normalize=True)
    params = dual_encoder.init_tower(spec, jax.random.key(2))
    qs, ps = random_seqs(12, seed=4, lengths=(3, 5, 9)), random_seqs(12, seed=5)
    labels = jnp.arange(12)

    def loss(q, p):
        logits = q @ p.T / 0.05
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def unpacked(params):
        q = dual_encoder.embed(spec, params, *padded(qs))
        return loss(q, dual_encoder.embed(spec, params, *padded(ps)))

    def packed(params):
        q = packed_embed(spec, params, qs, row_length=16, max_segments=4)
        return loss(q, packed_embed(spec, params, ps))

    ref_loss, ref_grad = jax.value_and_grad(unpacked)(params)
    got_loss, got_grad = jax.value_and_grad(packed)(params)
    assert abs(float(ref_loss - got_loss)) <= TOL
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), ref_grad, got_grad)
    scale = max(jax.tree.leaves(jax.tree.map(lambda a: float(jnp.abs(a).max()), ref_grad)))
    assert scale > 1e-3 and max(jax.tree.leaves(diffs)) <= TOL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    """A random tiny BERT saved by transformers, with the MiniLM tokenizer."""
    import torch
    from transformers import BertConfig as HFBertConfig
    from transformers import BertModel

    path = tmp_path_factory.mktemp("tiny_bert_packing")
    torch.manual_seed(3)
    cfg = HFBertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(cfg).save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_path / name, path / name)
    return loading.load_encoder(path, pooling="mean", normalize=True)


def mixed_texts(n=45, seed=0):
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    lens = rng.choice([0, 1, 3, 8, 30, 100, 180], size=n)
    return [" ".join(rng.choice(words, size=k)) for k in lens]


def test_encode_packed_equals_encode_texts(tiny, monkeypatch):
    texts = mixed_texts()
    ref = encode.encode_texts(
        tiny, texts, batch_size=8, max_length=200, progress=False, packing=False
    )
    got = packing.encode_packed(
        tiny, texts, batch_size=3, max_length=200, max_segments=8, progress=False
    )
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= TOL
    # Through encode_texts, 8 rows per step sharded over the 8 test devices.
    got = encode.encode_texts(
        tiny, texts, batch_size=8, max_length=200, progress=False, packing=True
    )
    assert float(np.abs(got - ref).max()) <= TOL
    monkeypatch.setattr(packing, "PACK_CHUNK", 7)  # each tier packed in several chunks
    tiers = packing.pack_tiers([[1] * n for n in range(1, 40)], 16, 64)
    assert [len(sel) for sel, _ in tiers] == [7, 7, 2, 7, 7, 7, 2]
    got = packing.encode_packed(
        tiny, texts, batch_size=3, max_length=200, max_segments=8, progress=False
    )
    assert float(np.abs(got - ref).max()) <= TOL


@pytest.mark.slow
def test_encode_packed_equals_unpacked_minilm(minilm_path):
    enc = loading.load_encoder(minilm_path)
    texts = mixed_texts(60, seed=1)
    ref = encode.encode_texts(
        enc, texts, batch_size=16, max_length=256, progress=False, packing=False
    )
    got = packing.encode_packed(enc, texts, batch_size=4, max_length=256, progress=False)
    assert float(np.abs(got - ref).max()) <= TOL


def test_worth_packing_compares_the_positions_of_both_plans():
    short_and_long = [[1] * n for n in [3, 5, 200, 4, 6, 190, 2, 7] * 4]
    pack, padded, packed = packing.worth_packing(short_and_long, 8, 256)
    assert pack and padded > 0.3 and packed < padded  # sorted batches of 8 still pad 3 -> 16
    even = [[1] * 64 for _ in range(32)]  # bucket-sized texts: padding has nothing to waste
    assert packing.worth_packing(even, 8, 256) == (False, 0.0, 0.0)
    long_ones = [[1] * n for n in range(150, 256, 3)]  # SciFact-like: one text a row either way
    pack, padded, packed = packing.worth_packing(long_ones, 8, 256)
    assert not pack and packed >= padded


def test_encode_texts_packs_by_default_where_the_tower_can(tiny, monkeypatch):
    calls = []
    real = packing.encode_packed
    monkeypatch.setattr(packing, "encode_packed", lambda *a, **k: calls.append(1) or real(*a, **k))
    texts = mixed_texts(12)
    packed = encode.encode_texts(tiny, texts, batch_size=4, max_length=200, progress=False)
    assert calls == [1]
    padded = encode.encode_texts(
        tiny, texts, batch_size=4, max_length=200, progress=False, packing=False
    )
    assert calls == [1] and float(np.abs(packed - padded).max()) <= TOL
    monkeypatch.setattr(packing, "worth_packing", lambda *a: (False, 0.0, 0.0))
    again = encode.encode_texts(tiny, texts, batch_size=4, max_length=200, progress=False)
    assert calls == [1] and np.array_equal(again, padded)  # not worth it: padded
    deberta = dataclasses.replace(tiny, spec=dataclasses.replace(tiny.spec, arch="deberta-v2"))
    assert deberta.spec.arch not in dual_encoder.PACKABLE_ARCHS

    class Padded(Exception):
        pass

    def padded_step(spec):
        raise Padded

    monkeypatch.setattr(encode, "encode_step", padded_step)
    with pytest.raises(Padded):  # the padded path: DeBERTa cannot pack
        encode.encode_texts(deberta, texts, batch_size=4, max_length=200, progress=False)
    assert calls == [1]


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory):
    """(config, base encoder, params, padded batch, packed batch) from the trainer's pipeline."""
    from train_test import tiny_config

    c = tiny_config(tmp_path_factory.mktemp("pack_train"))
    base = bi_model.load_base_encoder(c.model)
    batch = next(iter(bi_task.make_pipeline(c, base.tokenizer, packing=False)))
    c.data.packing, c.data.pack_max_segments = True, 4
    packed = next(iter(bi_task.make_pipeline(c, base.tokenizer)))
    return c, base, bi_model.initial_dual_params(base, True), batch, packed


def test_pipeline_packs_the_same_tokens(train_setup):
    _, _, _, batch, packed = train_setup
    assert "q_attention_mask" not in packed and packed["q_segment_ids"].ndim == 2
    for side in ("q", "p"):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        rows, segs = packed[f"{side}_text_row"], packed[f"{side}_text_seg"]
        assert rows.shape == ids.shape[:-1] and len(packed[f"{side}_input_ids"]) % 8 == 0
        for i in np.ndindex(rows.shape):
            r = rows[i]
            got = packed[f"{side}_input_ids"][r][packed[f"{side}_segment_ids"][r] == segs[i] + 1]
            assert got.tolist() == ids[i][mask[i] > 0].tolist()
    assert packed["q_segment_ids"].max() >= 2  # rows really hold several queries
    for k in ("p_ids", "q_pos_ids"):
        np.testing.assert_array_equal(packed[k], batch[k])


def test_packed_train_step_equals_padded(train_setup):
    """One jitted step, batch sharded over 8 devices: same loss, metrics, and updated params."""
    from dualenc import sharding
    from dualenc.training import optim

    c, base, params, batch, packed = train_setup
    mesh = sharding.make_mesh((8, 1), devices=jax.devices()[:8])
    out = []
    for on, b in ((False, batch), (True, packed)):
        cfg = c.copy_and_resolve_references()
        cfg.data.packing = on
        tx, schedule = optim.make_optimizer(cfg.train, 10)
        state, sh = state_lib.create_state(params, tx, mesh, state_lib.mesh_rules(cfg))
        step = state_lib.jit_train_step(
            bi_step.make_train_step(cfg, base.spec, tx, schedule), sh, mesh
        )
        state, metrics = step(state, sharding.shard_batch(b, mesh), jax.random.key(0))
        out.append((jax.device_get(state["params"]), jax.device_get(metrics)))
    (p_ref, m_ref), (p_got, m_got) = out
    assert abs(float(m_got["loss"] - m_ref["loss"])) <= TOL
    assert abs(float(m_got["grad_norm"] - m_ref["grad_norm"])) <= TOL
    assert float(m_got["num_tokens"]) == float(m_ref["num_tokens"])
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p_got, p_ref))
    assert max(diffs) <= TOL


def test_packing_is_on_by_default_where_the_run_allows_it(train_setup):
    from configs import tiny

    c = tiny.get_config()
    assert c.data.packing and bi_task.use_packing(c, "bert")  # on any number of processes
    assert bi_task.use_packing(c, "distilbert")
    assert not bi_task.use_packing(c, "deberta-v2")  # relative positions cross segments
    c.data.packing = False
    assert not bi_task.use_packing(c, "bert")


@pytest.mark.parametrize("key", ["train.cache_chunk_size", "train.grad_accum_steps"])
def test_gradcache_and_accumulation_train_on_padded_batches(train_setup, key):
    from dualenc.training import optim

    c, base, params, _, packed = train_setup
    c = c.copy_and_resolve_references()
    c.data.packing = True
    node, leaf = key.split(".")
    c[node][leaf] = 2
    assert not bi_task.use_packing(c, "bert")
    tx, schedule = optim.make_optimizer(c.train, 10)
    step = bi_step.make_train_step(c, base.spec, tx, schedule)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    with pytest.raises(ValueError, match="packed batches need"):  # a packed batch is refused
        jax.eval_shape(step, state, jax.tree.map(jnp.asarray, packed), jax.random.key(0))
