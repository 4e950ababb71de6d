"""TSDAE: the decoder against transformers' BertLMHeadModel, the loss and its gradients against
sentence-transformers' DenoisingAutoEncoderLoss, the noise and batches, and the train loop."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from dualenc.io import InputError
from dualenc.models import bert_decoder, convert
from dualenc.models.bert import BertConfig
from dualenc.models.loading import load_encoder
from dualenc.training import config as config_lib
from dualenc.training import loop
from dualenc.tsdae import data as denoising
from dualenc.tsdae import step as tsdae_step
from dualenc.tsdae import task as tsdae_task
from tests.tiny_data import save_tiny_bert, write_beir
from tests.train_test import use_compile_cache


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    yield from use_compile_cache(tmp_path_factory.getbasetemp() / "jax_cache")


def _hf_decoder(heads: int, hidden: int, seed: int = 0):
    cfg = transformers.BertConfig(
        vocab_size=99,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=37,
        is_decoder=True,
        add_cross_attention=True,
    )
    torch.manual_seed(seed)
    m = transformers.BertLMHeadModel(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm params: zeros would hide mix-ups
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m, BertConfig.from_hf(cfg.to_dict())


def _flax_params(m, cfg) -> dict:
    abstract = jax.eval_shape(lambda: bert_decoder.init_decoder(cfg, jax.random.key(0)))
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    return convert.params_from_state_dict(
        sd, abstract, prefix="", ignore_unexpected=[r"^cls\.predictions\.decoder\."]
    )


# heads of 8 take XLA's attention, heads of 16 the native CPU kernel (with a causal dense mask)
@pytest.mark.parametrize("heads", [4, 2])
def test_decoder_logits_equal_bert_lm_head_model(heads):
    m, cfg = _hf_decoder(heads, 32)
    params = _flax_params(m, cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 99, (3, 7))
    ids[1, 5:] = 0
    mask = (ids > 0).astype(np.int64)
    mem = rng.standard_normal((3, 2, 32)).astype(np.float32)
    mem_mask = np.array([[1, 1], [1, 0], [1, 0]])
    with torch.no_grad():
        ref = m(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            encoder_hidden_states=torch.tensor(mem),
            encoder_attention_mask=torch.tensor(mem_mask),
        ).logits.numpy()
    got = bert_decoder.BertLMHeadDecoder(cfg).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), mem, jnp.asarray(mem_mask)
    )
    real = mask.astype(bool)  # padded query rows are never read (their labels are ignored)
    np.testing.assert_allclose(np.asarray(got)[real], ref[real], atol=1e-5, rtol=0)
    # a future token changes no earlier logit (causal), the second memory slot only row 0
    ids2 = ids.copy()
    ids2[:, 4] = (ids2[:, 4] % 98) + 1
    got2 = bert_decoder.BertLMHeadDecoder(cfg).apply(
        {"params": params}, jnp.asarray(ids2), jnp.asarray(mask), mem, jnp.asarray(mem_mask)
    )
    np.testing.assert_array_equal(np.asarray(got2)[:, :4], np.asarray(got)[:, :4])
    assert np.abs(np.asarray(got2)[0, 4:] - np.asarray(got)[0, 4:]).max() > 1e-4


def test_tied_params_rebuild_the_decoder_tree():
    m, cfg = _hf_decoder(4, 32)
    params = _flax_params(m, cfg)
    own = bert_decoder.own_params(params)
    layers = params["bert"]["encoder"]["layer"]
    tower = {
        "embeddings": params["bert"]["embeddings"],
        "encoder": {
            "layer": {
                i: {k: v for k, v in lay.items() if k != "crossattention"}
                for i, lay in layers.items()
            }
        },
        "pooler": {"dense": {"kernel": np.zeros((32, 32)), "bias": np.zeros(32)}},
    }
    tied = bert_decoder.tied_params(tower, own)
    assert jax.tree.structure(tied) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(tied), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory, minilm_path):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_tsdae"), minilm_path, seed=3)


def test_loss_and_gradients_equal_sentence_transformers(tiny_st):
    """Same tied weights, same batch: dualenc's TSDAE loss and the gradients of the shared
    encoder weights (both uses summed), the cross-attention and the LM head equal
    DenoisingAutoEncoderLoss(tie_encoder_decoder=True)'s."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    torch.manual_seed(0)
    st = SentenceTransformer(modules=[Transformer(str(tiny_st)), Pooling(32, "mean"), Normalize()])
    loss_mod = DenoisingAutoEncoderLoss(st, tie_encoder_decoder=True)
    with torch.no_grad():  # the fresh LM head bias is zero: make it count
        loss_mod.decoder.cls.predictions.bias.add_(torch.randn(30522) * 0.1)
    loss_mod.eval()
    originals = ["the apple river flows past the stone castle", "a tiger sleeps", "ocean"]
    noisy = ["apple stone castle", "tiger", "ocean"]
    src, tgt = st.tokenize(noisy), st.tokenize(originals)
    ref = loss_mod([src, tgt], labels=None)
    ref.backward()

    enc = load_encoder(tiny_st, pooling="mean", normalize=True)
    cfg = enc.config
    dec_sd = {k: v.detach().numpy() for k, v in loss_mod.decoder.state_dict().items()}
    abstract = jax.eval_shape(lambda: bert_decoder.init_decoder(cfg, jax.random.key(0)))
    full = convert.params_from_state_dict(
        dec_sd, abstract, prefix="", ignore_unexpected=[r"^cls\.predictions\.decoder\."]
    )
    params = {"encoder": enc.params, "decoder": bert_decoder.own_params(full)}
    batch = {
        "src_ids": jnp.asarray(src["input_ids"].numpy()),
        "src_mask": jnp.asarray(src["attention_mask"].numpy()),
        "tgt_ids": jnp.asarray(tgt["input_ids"].numpy()),
        "tgt_mask": jnp.asarray(tgt["attention_mask"].numpy()),
    }
    loss, grads = jax.value_and_grad(lambda p: tsdae_step.tsdae_loss(enc.spec, p, batch))(params)
    assert float(loss) == pytest.approx(float(ref.detach()), abs=1e-5)

    hf = dict(loss_mod.decoder.named_parameters())
    pairs = {
        "bert.embeddings.word_embeddings.weight": grads["encoder"]["embeddings"]["word_embeddings"][
            "embedding"
        ],
        "bert.encoder.layer.0.attention.self.query.weight": grads["encoder"]["encoder"]["layer"][
            "0"
        ]["attention"]["self"]["query"]["kernel"].T,
        "bert.encoder.layer.0.output.dense.bias": grads["encoder"]["encoder"]["layer"]["0"][
            "output"
        ]["dense"]["bias"],
        "bert.encoder.layer.0.crossattention.self.value.weight": grads["decoder"]["crossattention"][
            "0"
        ]["self"]["value"]["kernel"].T,
        "cls.predictions.transform.dense.weight": grads["decoder"]["cls"]["predictions"][
            "transform"
        ]["dense"]["kernel"].T,
        "cls.predictions.bias": grads["decoder"]["cls"]["predictions"]["bias"],
    }
    for name, got in pairs.items():
        want = hf[name].grad.numpy()
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-6, rtol=1e-4, err_msg=name)


def test_initial_decoder_takes_the_lm_head_of_a_pretraining_checkpoint(tmp_path, minilm_path):
    """A BERT MLM checkpoint (bert-base-uncased style) carries `cls.predictions.*`: the decoder
    starts from that head, as `BertLMHeadModel.from_pretrained` does; the cross-attention is new."""
    from tests.tiny_data import TINY, copy_minilm_tokenizer

    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=30522, **TINY))
    with torch.no_grad():
        mlm.cls.predictions.bias.add_(torch.randn(30522))
    mlm.save_pretrained(str(tmp_path))
    copy_minilm_tokenizer(minilm_path, tmp_path)
    base = load_encoder(tmp_path)
    own = tsdae_task.initial_decoder(base, seed=0)
    pred = own["cls"]["predictions"]
    np.testing.assert_allclose(pred["bias"], mlm.cls.predictions.bias.detach().numpy())
    want = mlm.cls.predictions.transform.dense.weight.detach().numpy().T
    np.testing.assert_allclose(pred["transform"]["dense"]["kernel"], want)
    fresh = tsdae_task.initial_decoder(
        load_encoder(minilm_path), seed=0
    )  # no head there: HF's init
    assert not np.asarray(fresh["cls"]["predictions"]["bias"]).any()
    assert set(own["crossattention"]) == {"0"}


# ----------------------------------------------------------------------------- data


def test_split_sentences():
    text = 'It works, e.g. Here. Fig. 3 shows it! "Quoted." Next? yes. Smith et al. Found J. Doe.'
    assert denoising.split_sentences(text) == [
        "It works, e.g. Here.",
        "Fig. 3 shows it!",
        '"Quoted."',
        "Next? yes.",
        "Smith et al. Found J. Doe.",
    ]
    assert denoising.split_sentences("   ") == []


def test_delete_words_ratio_and_at_least_one_word():
    text = " ".join(f"w{i}" for i in range(40)) + " , ."
    kept = []
    for i in range(200):
        out = denoising.delete_words(text, 0.6, np.random.default_rng(i))
        words = out.split()
        assert set(words) <= set(text.split())
        assert words == [w for w in text.split() if w in set(words)]  # order kept
        kept.append(len(words) / 42)
    assert 0.37 < np.mean(kept) < 0.43
    for i in range(50):  # all deleted at ratio ~1: one word survives
        assert len(denoising.delete_words("a b c", 0.999999, np.random.default_rng(i)).split()) == 1
    assert denoising.delete_words("a b c", 0.0, np.random.default_rng(0)) == "a b c"
    assert denoising.delete_words("   ", 0.6, np.random.default_rng(0)) == "   "


def _sentences(n: int = 40) -> list[str]:
    words = "apple river stone cloud tiger piano garden rocket silver forest".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, 3 + i % 7)) + f" number {i}." for i in range(n)]


def test_pipeline_is_seeded_resumable_and_split_over_hosts(minilm_path):
    enc = load_encoder(minilm_path)
    kw = dict(global_batch_size=8, max_length=32, del_ratio=0.6, seed=1)
    a = denoising.DenoisingPipeline(_sentences(), enc.tokenizer, **kw)
    batches = [next(a) for _ in range(7)]  # 5 steps per epoch: crosses into epoch 1
    b = denoising.DenoisingPipeline(_sentences(), enc.tokenizer, **kw)
    b.set_state({"step": 4})
    for want in batches[4:]:
        got = next(b)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert batches[0]["src_mask"].sum() < batches[0]["tgt_mask"].sum()  # words were deleted
    assert batches[0]["tgt_ids"].shape[1] % denoising.BUCKET == 0
    noisy, orig = a.texts_at(5)
    assert noisy != a.texts_at(0)[0]  # a new epoch: new order and noise
    hosts = [
        denoising.DenoisingPipeline(
            _sentences(), enc.tokenizer, process_index=i, process_count=2, **kw
        ).texts_at(3)
        for i in range(2)
    ]
    assert hosts[0][1] + hosts[1][1] == a.texts_at(3)[1]
    assert hosts[0][0] + hosts[1][0] == a.texts_at(3)[0]


def test_read_sentences_beir_and_text(tmp_path):
    (tmp_path / "beir").mkdir()
    root = write_beir(tmp_path / "beir")
    s = denoising.read_sentences(str(root), "beir", min_chars=3)
    assert len(s) > 60 and "apple" not in s[:0]
    f = tmp_path / "s.txt"
    f.write_text("short\na sentence long enough\n\n")
    assert denoising.read_sentences(str(f), "text") == ["a sentence long enough"]
    with pytest.raises(InputError, match="no sentence of at least"):
        denoising.read_sentences(str(f), "text", min_chars=100)
    with pytest.raises(InputError, match="no such sentence file"):
        denoising.read_sentences(str(tmp_path / "nope.txt"), "text")


# ----------------------------------------------------------------------------- train loop


def _cfg(tmp: Path, model_dir: Path, beir: Path, **over):
    c = config_lib.base_config()
    c.task = "tsdae"
    c.model.name_or_path = str(model_dir)
    c.model.pooling = "mean"
    c.tsdae.path = str(tmp / "sentences.txt")
    c.tsdae.format = "text"
    c.tsdae.max_length = 32
    c.data.dev.path = str(beir)
    c.data.dev.split = "dev"
    c.eval.before_after_split = "dev"
    c.train.batch_size = 8
    c.train.num_steps = 8
    c.train.learning_rate = 3e-3
    c.train.schedule = "constant"
    c.train.dropout = False
    c.checkpoint.every_steps = 4
    c.log.every_steps = 2
    for k, v in over.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return config_lib.finalize(c)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_st):
    tmp = tmp_path_factory.mktemp("tsdae_run")
    (tmp / "sentences.txt").write_text("\n".join(_sentences()) + "\n")
    (tmp / "beir").mkdir()
    beir = write_beir(tmp / "beir")
    work = tmp / "work"
    return tmp, beir, work, loop.train_and_evaluate(_cfg(tmp, tiny_st, beir), work)


def test_train_lowers_the_loss_and_exports_the_encoder(tiny_run, tiny_st):
    tmp, beir, work, res = tiny_run
    losses = [r["loss"] for r in res["log"]]
    assert res["step"] == 8 and len(losses) == 4
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.5, losses
    assert set(res) >= {"after/dev", "before/dev", "export_dir"}
    assert json.loads((work / "metrics.json").read_text())["step"] == 8
    before, after = load_encoder(tiny_st), load_encoder(work / "export")
    assert after.pooling == "mean" and after.normalize
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params), strict=True)
    ]
    assert max(moved) > 1e-3  # the encoder was trained, not just the decoder


def test_resume_continues_exactly(tiny_run, tiny_st):
    """4 steps, then the same workdir to 8 steps: the params equal the straight 8-step run."""
    tmp, beir, work, _ = tiny_run
    w2 = tmp / "resumed"
    c4 = _cfg(tmp, tiny_st, beir, **{"train.num_steps": 4, "eval.before_after_split": ""})
    loop.train_and_evaluate(c4, w2)
    c8 = _cfg(tmp, tiny_st, beir, **{"eval.before_after_split": ""})
    res = loop.train_and_evaluate(c8, w2)
    assert res["step"] == 8 and res["log"][0]["step"] == 6
    a, b = load_encoder(work / "export"), load_encoder(w2 / "export")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_non_bert_tower_is_a_config_error(tmp_path, minilm_path):
    from tests.tiny_data import copy_minilm_tokenizer

    cfg = transformers.DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64
    )
    transformers.DistilBertModel(cfg).save_pretrained(str(tmp_path / "distil"))
    copy_minilm_tokenizer(minilm_path, tmp_path / "distil")
    (tmp_path / "sentences.txt").write_text("\n".join(_sentences()) + "\n")
    c = _cfg(tmp_path, tmp_path / "distil", tmp_path)
    with pytest.raises(config_lib.ConfigError, match="needs a BERT tower.*distilbert"):
        loop.train_and_evaluate(c, tmp_path / "w")


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"tsdae.path": ""}, "tsdae.path"),
        ({"tsdae.format": "csv"}, "tsdae.format"),
        ({"tsdae.del_ratio": 1.0}, "tsdae.del_ratio"),
        ({"tsdae.max_length": 2}, "tsdae.max_length"),
        ({"train.num_steps": 0, "train.num_epochs": 0.0}, "num_steps"),
    ],
)
def test_config_errors_name_the_key(tmp_path, tiny_st, over, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        loop.train_and_evaluate(_cfg(tmp_path, tiny_st, tmp_path, **over), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_periodic_dev_eval_and_early_stopping(tiny_run, tiny_st, monkeypatch):
    """TSDAE runs on the one loop: dev every `eval.every_steps`, early stop after
    `eval.patience` evals without gain, and the loop's rates (compile time kept out)."""
    tmp, beir, _, _ = tiny_run
    seq = iter([0.5, 0.4, 0.3, 0.9])
    monkeypatch.setattr(tsdae_task, "eval_encoders", lambda *a: {"nDCG@10": next(seq)})
    over = {"eval.every_steps": 2, "eval.patience": 2, "eval.before_after_split": ""}
    res = loop.train_and_evaluate(_cfg(tmp, tiny_st, beir, **over), tmp / "early")
    assert res["step"] == 6 and res["early_stopped"] and res["best_step"] == 2
    assert [h["step"] for h in res["dev_history"]] == [2, 4, 6]
    assert res["dev"] == {"nDCG@10": 0.3}  # the last eval: TSDAE exports the final params
    assert {"examples_per_sec", "tokens_per_sec"} <= set(res["log"][-1])
    assert (tmp / "early" / "export").is_dir()
