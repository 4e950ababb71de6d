"""GenQ: the T5 generator against transformers (logits, greedy `generate`, sampling warpers) and
the command line that turns a corpus into a BEIR training set of synthetic queries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from dualenc.data import genq
from dualenc.data.beir import load_beir
from dualenc.models import convert, t5
from dualenc.training import loop
from tests.tiny_data import copy_minilm_tokenizer, write_beir

REPO = Path(__file__).resolve().parents[1]


def _hf_t5(proj: str = "relu", vocab: int = 99, seed: int = 0, **over):
    over = {"num_decoder_layers": 3, **over}
    cfg = transformers.T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=proj,
        decoder_start_token_id=0,
        **over,
    )
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(cfg).eval()


def _params(m) -> tuple[dict, t5.T5Config]:
    cfg = t5.T5Config.from_hf(m.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    ignore = [r"embed_tokens\.weight$", r"^lm_head\.weight$"]
    p = convert.params_from_state_dict(
        sd, t5.param_shapes(cfg), prefix="", ignore_unexpected=ignore
    )
    return jax.tree.map(jnp.asarray, p), cfg


def _inputs(b: int = 3, length: int = 30, vocab: int = 99, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (b, length))
    ids[1, 20:] = 0  # padding
    return ids, (ids > 0).astype(np.int64)


# 30 tokens with max_distance 20 and 8 buckets: exact, logarithmic and clipped buckets all occur
@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_t5_logits_equal_transformers(proj):
    m = _hf_t5(proj)
    params, cfg = _params(m)
    ids, mask = _inputs()
    dec = np.random.default_rng(1).integers(2, 99, (3, 25))
    dec[:, 0] = 0
    with torch.no_grad():
        ref = m(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(dec),
        ).logits.numpy()
    got = np.asarray(t5.forward(params, cfg, ids, mask, dec))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_step_by_step_decoding_equals_the_teacher_forced_forward():
    """The generation path (one token per call into the cache) gives the forward's logits."""
    params, cfg = _params(_hf_t5())
    ids, mask = _inputs()
    dec = np.random.default_rng(1).integers(2, 99, (3, 12))
    full = np.asarray(t5.forward(params, cfg, ids, mask, dec))
    enc = t5.encode(params, cfg, ids, mask)
    cross, cache = t5.cross_kv(params, cfg, enc), t5.empty_cache(cfg, 3, 12)
    for t in range(12):
        step, cache = t5.decode(params, cfg, dec[:, t : t + 1], t, cache, cross, mask)
        np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, t], atol=1e-5, rtol=0)


def test_greedy_generation_equals_transformers_generate():
    m = _hf_t5(vocab=99, seed=2, num_decoder_layers=2)  # HF's cache assumes equal depths
    params, cfg = _params(m)
    ids, mask = _inputs(b=4)
    free = m.generate(
        input_ids=torch.tensor(ids),
        attention_mask=torch.tensor(mask),
        max_new_tokens=10,
        do_sample=False,
        num_beams=1,
        eos_token_id=1,
        pad_token_id=0,
    ).numpy()
    eos = int(free[0, 4])  # end row 0 after its 4th token: rows then stop at different steps
    ref = m.generate(
        input_ids=torch.tensor(ids),
        attention_mask=torch.tensor(mask),
        max_new_tokens=10,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=0,
    ).numpy()[:, 1:]
    cfg = t5.T5Config(**{**cfg.__dict__, "eos_token_id": eos})
    got = np.asarray(
        genq.generate(params, ids, mask, jax.random.key(0), cfg=cfg, max_new_tokens=10)
    )
    ref = np.pad(ref, ((0, 0), (0, 10 - ref.shape[1])))  # HF stops when every row has ended
    np.testing.assert_array_equal(got, ref)
    ends = [list(r).index(eos) if eos in r else None for r in got.tolist()]
    assert ends[0] is not None and ends[0] <= 3 and len(set(ends)) > 1, ends  # rows end apart
    assert (got[0, ends[0] + 1 :] == 0).all()  # padding after the end


def test_sampling_warpers():
    m = _hf_t5(seed=3)
    params, cfg = _params(m)
    ids, mask = _inputs()
    kw = dict(cfg=cfg, max_new_tokens=8)
    greedy = np.asarray(genq.generate(params, ids, mask, jax.random.key(0), **kw))
    for warp in (dict(top_k=1), dict(top_p=1e-6)):  # one token left: sampling is greedy
        got = genq.generate(params, ids, mask, jax.random.key(5), sample=True, **warp, **kw)
        np.testing.assert_array_equal(np.asarray(got), greedy)
    a, b = (
        np.asarray(genq.generate(params, ids, mask, jax.random.key(s), sample=True, **kw))
        for s in (1, 2)
    )
    assert (a != b).any()  # full sampling differs between seeds
    # the first sampled token of 64 draws lies in the top 3 of the first step's logits
    enc = t5.encode(params, cfg, ids, mask)
    first, _ = t5.decode(
        params,
        cfg,
        jnp.zeros((3, 1), jnp.int32),
        0,
        t5.empty_cache(cfg, 3, 1),
        t5.cross_kv(params, cfg, enc),
        mask,
    )
    top3 = np.argsort(-np.asarray(first)[:, 0], axis=-1)[:, :3]
    got = np.asarray(
        genq.generate(
            params, ids, mask, jax.random.key(7), sample=True, top_k=3, num_return=64, **kw
        )
    )
    for row in range(3):
        assert set(got[row * 64 : (row + 1) * 64, 0]) <= set(top3[row])
        assert len(set(got[row * 64 : (row + 1) * 64, 0])) > 1


def test_top_p_keeps_what_transformers_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = np.random.default_rng(0).standard_normal((6, 50)).astype(np.float32) * 3
    for p in (0.3, 0.9, 0.95):
        ref = TopPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
        got = np.asarray(genq._warp(jnp.asarray(logits), 1.0, 0, p))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))


def test_top_k_then_top_p_keeps_what_transformers_keeps():
    """Sampling with top-k draws among the k best only (no sort of the vocabulary): the tokens
    it can draw are those transformers' TopK then TopP warpers leave."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(1).standard_normal((6, 200)).astype(np.float32) * 2
    for k, p in ((25, 0.95), (25, 0.5), (3, 1.0), (40, 0.2)):
        ref = TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, torch.tensor(logits))).numpy()
        vals, idx = genq.top_k_candidates(jnp.asarray(logits), 1.0, k, p)
        for row in range(6):
            got = set(np.asarray(idx)[row][np.isfinite(np.asarray(vals)[row])].tolist())
            assert got == set(np.flatnonzero(np.isfinite(ref[row])).tolist()), (k, p, row)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory, minilm_path):
    """A random T5 saved by transformers, with the MiniLM (WordPiece) tokenizer: the generator's
    code path does not depend on the vocabulary."""
    d = tmp_path_factory.mktemp("tiny_t5")
    m = _hf_t5(vocab=30522, eos_token_id=102, seed=4, num_decoder_layers=2)  # [SEP] ends a query
    m.save_pretrained(str(d))
    return copy_minilm_tokenizer(minilm_path, d)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dualenc.genq", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_cli_writes_a_beir_training_set(tmp_path, tiny_t5_dir):
    (tmp_path / "beir").mkdir()
    beir = write_beir(tmp_path / "beir")
    out = tmp_path / "genq"
    p = _cli(
        f"--model={tiny_t5_dir}",
        f"--data={beir}",
        f"--output={out}",
        "--queries_per_doc=3",
        "--limit=10",
        "--batch_size=4",
        "--max_query_length=12",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    assert counts["docs"] == 10 and counts["queries"] + counts["dropped_empty_or_duplicate"] == 30
    assert counts["skipped_empty_docs"] == 0
    ds = load_beir(out, "train")
    assert len(ds.corpus) == 10 and len(ds.queries) == counts["queries"] > 0
    per_doc: dict[str, list[str]] = {}
    for qid, rel in ds.qrels.items():
        assert list(rel.values()) == [1]
        per_doc.setdefault(next(iter(rel)), []).append(ds.queries[qid])
    assert all(len(qs) == len(set(qs)) <= 3 for qs in per_doc.values())
    # the same seed gives the same queries; greedy gives one per document
    again = _cli(
        f"--model={tiny_t5_dir}",
        f"--data={beir}",
        f"--output={tmp_path / 'again'}",
        "--queries_per_doc=3",
        "--limit=10",
        "--batch_size=4",
        "--max_query_length=12",
    )
    assert again.returncode == 0
    assert (tmp_path / "again" / "queries.jsonl").read_text() == (out / "queries.jsonl").read_text()


def test_generated_set_trains_a_bi_encoder(tmp_path, tiny_t5_dir):
    """GenQ's output is training data as it is: the bi-encoder trainer reads it (format beir,
    BM25-mined negatives) and runs its steps."""
    from tests.train_test import tiny_config

    (tmp_path / "beir").mkdir()
    beir = write_beir(tmp_path / "beir")
    out = tmp_path / "genq"
    p = _cli(
        f"--model={tiny_t5_dir}",
        f"--data={beir}",
        f"--output={out}",
        "--queries_per_doc=2",
        "--batch_size=16",
        "--max_query_length=8",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["skipped_empty_docs"] == 1
    c = tiny_config(
        tmp_path,
        **{
            "data.train.path": str(out),
            "data.train.format": "beir",
            "data.train.split": "train",
            "data.mine_negatives": "bm25",
            "train.num_steps": 3,
            "export.enabled": False,
            "eval.every_steps": -1,
        },
    )
    res = loop.train_and_evaluate(c, tmp_path / "work")
    assert res["step"] == 3 and all(np.isfinite(r["loss"]) for r in res["log"])


def test_cli_bad_input_is_one_line_exit_2(tmp_path, tiny_t5_dir, minilm_path):
    cases = [
        ([f"--model={tiny_t5_dir}", f"--data={tmp_path / 'none'}"], "no such corpus"),
        ([f"--model={minilm_path}", f"--data={tmp_path}"], "no corpus.jsonl"),
        ([f"--model={tiny_t5_dir}", f"--data={tmp_path}", "--top_p=0"], "--top_p"),
    ]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    cases.append(([f"--model={minilm_path}", f"--data={tmp_path / 'c'}"], "model_type 't5'"))
    for args, match in cases:
        p = _cli(*args, f"--output={tmp_path / 'out'}")
        assert p.returncode == 2, (args, p.stderr[-1000:])
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], lines
    assert not (tmp_path / "out").exists()
