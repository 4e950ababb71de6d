"""The SciFact strategy study (issue 8): zero-shot vs MNRL (in-batch, + BM25 / dense negatives)
vs adaptive relevance margins (in-batch, + BM25 negatives) vs MarginMSE, at equal steps.

python -m dualenc.study --config configs/study/scifact.py --workdir /work/runs/study_scifact

Dev = 20 % of SciFact TRAIN queries (seed 20261123, `carve.*`), the other 80 % train (647
queries: 20 steps of 32 = one epoch). Budget settings for a 2-core CPU: 20 steps per run, eval
max_length 128 (the recipe's final figure, configs/scifact.py, uses 256). Hyper-parameters are
fixed (not tuned): lr 3e-5 with Adam for every loss (Adam's update is invariant to the loss
scale), batch 32, 1 negative per query where a strategy uses negatives.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ml_collections import config_dict  # noqa: E402

import configs  # noqa: E402
from dualenc.io import data_dir  # noqa: E402


def train_base():
    """The trainer config every run starts from (strategies override parts of it)."""
    c = configs.base_config()
    c.model.name_or_path = configs.minilm_path()
    c.model.pooling = "mean"
    c.model.normalize = True
    c.data.train.format = "beir"
    c.data.num_negatives = 1
    c.data.q_max_length = 48
    c.data.p_max_length = 128
    c.data.pad_to_max_length = True
    c.train.batch_size = 32
    c.train.learning_rate = 3e-5
    c.train.warmup_steps = 2
    c.train.schedule = "linear"
    c.loss.scale = 20.0
    c.log.every_steps = 5
    return configs.finalize(c)


def strategies():
    """name -> {negatives, overrides (a partial trainer config), description}."""

    def mnrl():  # fresh dicts: ConfigDict would share one dict object between strategies
        return {"name": "contrastive"}

    def am():
        return {"name": "adaptive_margin", "margin_in_batch": True}

    s = {
        "zero_shot": {"zero_shot": True, "description": "all-MiniLM-L6-v2, no training"},
        "mnrl_in_batch": {
            "overrides": {"loss": mnrl(), "data": {"num_negatives": 0}},
            "description": "MNRL, in-batch negatives only",
        },
        "mnrl_bm25": {
            "negatives": "bm25",
            "overrides": {"loss": mnrl(), "data": {"num_negatives": 1}},
            "description": "MNRL + 1 BM25-mined negative (dualenc.mine, ranks 3-30, < 0.95 pos)",
        },
        "mnrl_dense": {
            "negatives": "dense",
            "overrides": {"loss": mnrl(), "data": {"num_negatives": 1}},
            "description": "MNRL + 1 negative mined by the zero-shot model (same window/rule)",
        },
        "am_in_batch": {
            "overrides": {"loss": am(), "data": {"num_negatives": 0}},
            "description": "adaptive margins, squared error, per-query in-batch form",
        },
        "am_bm25": {
            "negatives": "bm25",
            "overrides": {"loss": am(), "data": {"num_negatives": 1}},
            "description": "adaptive margins in-batch + the BM25-mined negative as candidate",
        },
        "margin_mse": {
            "negatives": "teacher",
            "overrides": {"loss": {"name": "margin_mse"}, "data": {"num_negatives": 1}},
            "description": "MarginMSE on negatives mined + scored by the best-on-dev "
            "bi-encoder of seed 0 (no cross-encoder export was available)",
        },
    }
    return s


def get_config():
    c = config_dict.ConfigDict()
    c.title = "SciFact strategy study"
    c.notes = (
        "all-MiniLM-L6-v2 fine-tuned on 80 % of SciFact train; dev = the other 20 % (carve seed "
        "20261123); test = SciFact test (300 queries, 5,183 docs); eval max_length 128."
    )
    c.eval_root = str(data_dir() / "scifact")
    c.dev_split = "dev_carved"
    c.test_split = "test"
    c.carve = config_dict.ConfigDict(
        {"enabled": True, "source_split": "train", "fraction": 0.2, "seed": 20261123}
    )
    c.train = train_base()
    c.num_steps = 20
    c.seeds = (0, 1, 2)
    c.strategies = config_dict.ConfigDict(strategies())
    c.order = tuple(strategies())  # ConfigDict iterates its keys sorted
    c.mine = config_dict.ConfigDict(
        {
            "num_negatives": 5,
            "range_min": 3,
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
            "answers": False,
            "answer_ks": (5, 20, 100),
            "cache": True,
        }
    )
    c.table_measures = ("nDCG@10", "R@100")
    c.dev_measure = "nDCG@10"
    c.keep_exports = False
    return c
