"""Tiny cross-encoder training inputs: pair files with a learnable rule, and a tiny config."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from tests.tiny_data import WORDS  # noqa: E402

TINY_OVERRIDES = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """sentence1/sentence2/label TSV: label 1 iff the second text's words are from the first
    half of WORDS (a bag-of-words rule a 1-layer model learns in a few steps)."""
    rng = np.random.default_rng(seed)
    lines = ["sentence1\tsentence2\tlabel"]
    for i in range(n):
        a = rng.choice(len(WORDS), 3, replace=False)
        y = i % 2
        b = rng.choice(10, 3, replace=False) + (0 if y else 10)
        lines.append(f"{' '.join(WORDS[j] for j in a)}\t{' '.join(WORDS[j] for j in b)}\t{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


def pair_config(tmp: Path, model_dir, **over):
    """task='cross' pair classification of tiny pair files with a random 1-layer BERT."""
    c = configs.base_config()
    c.task = "cross"
    c.model.name_or_path = str(model_dir)
    c.model.init_random = True
    c.model.config_overrides = configs.config_dict.ConfigDict(dict(TINY_OVERRIDES))
    c.data.train.format = "pairs"
    c.data.train.path = str(write_pairs(tmp / "train.tsv", 64, 0))
    c.data.dev.path = str(write_pairs(tmp / "dev.tsv", 16, 1))
    c.data.test.path = str(write_pairs(tmp / "test.tsv", 16, 2))
    c.cross.num_labels = 2
    c.cross.loss = "pair_ce"
    c.cross.max_length = 16
    c.cross.pad_to_max_length = True
    c.cross.eval_metric = "F1"
    c.cross.eval_batch_size = 16
    c.train.batch_size = 16
    c.train.num_steps = 24
    c.train.learning_rate = 1e-2
    c.train.warmup_steps = 0
    c.train.dropout = False
    c.checkpoint.every_steps = 12
    c.eval.every_steps = 12
    c.log.every_steps = 4
    c.export.enabled = True
    for k, v in over.items():
        node = c
        *parts, last = k.split(".")
        for p in parts:
            node = node[p]
        node[last] = v
    return configs.finalize(c)


def rerank_config(tmp: Path, model_dir, beir_root: Path, **over):
    """task='cross' listwise reranker on a tiny BEIR dir: BM25-mined negatives, 5 judged queries
    held out as dev (seeded), BM25 first stage; 'test' is the same split (mechanics only)."""
    c = pair_config(tmp, model_dir)
    c.unlock()
    c.data.train.format = "beir"
    c.data.train.path = str(beir_root)
    c.data.train.split = "dev"
    c.data.dev.path = ""
    c.data.test.path = str(beir_root)
    c.data.test.split = "dev"
    c.data.mine_negatives = "bm25"
    c.data.mine_depth = 5
    c.data.num_negatives = 3
    c.cross.num_labels = 1
    c.cross.loss = "listwise"
    c.cross.dev_queries = 5
    c.cross.eval_metric = "nDCG@10"
    c.cross.first_stage = "bm25"
    c.cross.rerank_top = 10
    c.cross.max_length = 32
    c.train.batch_size = 8
    c.train.num_steps = 2
    c.eval.every_steps = 2
    c.checkpoint.every_steps = 0
    c.lock()
    for k, v in over.items():
        node = c
        *parts, last = k.split(".")
        for p in parts:
            node = node[p]
        node[last] = v
    return c
