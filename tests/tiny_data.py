"""Tiny test inputs shared by the multi-host, CLI and cache tests: a random 1-layer BERT saved by
transformers (with the MiniLM tokenizer), a small BEIR dir with an empty document, a DPR file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

WORDS = (
    "apple river stone cloud tiger piano garden rocket silver forest castle ocean "
    "violin desert candle mirror planet bridge falcon meadow"
).split()
TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def copy_minilm_tokenizer(minilm_path: Path, dst: Path) -> Path:
    """The MiniLM tokenizer files into `dst` (tiny random models borrow its 30,522-word vocab)."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_path / name, dst / name)
    return dst


def save_tiny_bert(path: Path, minilm_path: Path, seed: int) -> Path:
    """A random BERT of shape TINY saved by transformers into `path`, with the MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=30522, **TINY)).save_pretrained(str(path))
    return copy_minilm_tokenizer(minilm_path, path)


def write_beir(root: Path) -> Path:
    """A 61-document BEIR dir (one document empty) with 20 judged dev queries."""
    rng = np.random.default_rng(0)
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i in range(60):
        a, b = rng.choice(len(WORDS), 2, replace=False)
        docs.append({"_id": f"d{i}", "title": WORDS[a], "text": f"{WORDS[b]} {i} " * 3})
        if i % 3 == 0:
            queries.append({"_id": f"q{i}", "text": f"{WORDS[a]} {WORDS[b]}"})
            qrels.append(f"q{i}\td{i}\t1")
    docs.append({"_id": "empty", "title": "", "text": ""})
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "dev.tsv").write_text("\n".join(qrels) + "\n")
    return root


def write_dpr(path: Path, n: int = 32, seed: int = 0) -> Path:
    """A tiny DPR train file: query i names two words that its positive repeats."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.choice(len(WORDS), 2, replace=False)
        pos = {"title": WORDS[a], "text": f"{WORDS[b]} {i} " * 3, "passage_id": f"d{i}"}
        neg = {"title": WORDS[a], "text": f"{WORDS[(b + 1) % 20]} {i + n}", "passage_id": f"n{i}"}
        rows.append(
            {
                "qid": f"q{i}",
                "question": f"{WORDS[a]} {WORDS[b]} {i}",
                "answers": [str(i)],
                "positive_ctxs": [pos],
                "negative_ctxs": [],
                "hard_negative_ctxs": [neg],
            }
        )
    path.write_text(json.dumps(rows))
    return path
