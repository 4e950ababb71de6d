"""The NQ system's own comparison on nq-toy: in-batch negatives only vs + 1 BM25 hard negative
(the DPR file's), 3 seeds, equal steps; DPR top-k answer accuracy and nDCG@10 on test.

python -m dualenc.study --config configs/study/nq_toy.py --workdir /work/runs/study_nq_toy
nq-toy has its own dev split (data/nq-toy/qrels/dev.tsv): no carve. Build it: make nq-toy.
Fixed hyper-parameters (configs/nq_toy.py): batch 32, lr 5e-5, 40 steps, eval max_length 128.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ml_collections import config_dict  # noqa: E402

import configs  # noqa: E402
from configs import nq_toy  # noqa: E402


def strategies():
    return {
        "zero_shot": {"zero_shot": True, "description": "all-MiniLM-L6-v2, no training"},
        "in_batch": {
            "overrides": {"data": {"num_negatives": 0}},
            "description": "MNRL, in-batch negatives only",
        },
        "hard_negatives": {
            "overrides": {"data": {"num_negatives": 1}},
            "description": "MNRL + the DPR file's BM25 hard negative (DPR's setting)",
        },
        "am_in_batch": {
            "overrides": {
                "loss": {"name": "adaptive_margin", "margin_in_batch": True},
                "data": {"num_negatives": 0},
            },
            "description": "adaptive margins, per-query in-batch form",
        },
    }


def get_config():
    c = config_dict.ConfigDict()
    c.title = "nq-toy strategy study"
    c.notes = "all-MiniLM-L6-v2 on nq-toy train (2,000 questions); test: 355 questions."
    c.eval_root = configs.repo_path("data", "nq-toy")
    c.dev_split = "dev"
    c.test_split = "test"
    c.carve = config_dict.ConfigDict(
        {"enabled": False, "source_split": "train", "fraction": 0.2, "seed": 0}
    )
    t = nq_toy.get_config()
    c.train = t
    c.num_steps = int(t.train.num_steps)
    c.seeds = (0, 1, 2)
    c.strategies = config_dict.ConfigDict(strategies())
    c.order = tuple(strategies())
    c.mine = config_dict.ConfigDict(
        {
            "num_negatives": 5,
            "range_min": 0,
            "range_max": 30,
            "max_relative_score": 0.95,
            "sampling": "top",
            "seed": 0,
            "max_length": 128,
        }
    )
    c.teacher = config_dict.ConfigDict({"cross_encoder": ""})
    c.eval = config_dict.ConfigDict(
        {
            "max_length": 128,
            "batch_size": 64,
            "k_values": (10, 100),
            "answers": True,
            "answer_ks": (5, 20, 100),
            "cache": True,
        }
    )
    c.table_measures = ("Acc@20", "Acc@100", "nDCG@10")
    c.dev_measure = "Acc@20"
    c.keep_exports = False
    return c
