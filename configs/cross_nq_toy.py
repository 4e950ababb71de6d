"""nq-toy reranker: all-MiniLM-L6-v2 + a fresh 1-logit head trained listwise on the nq-toy DPR
train file (positive + its hard negatives, random fill); dev/test rerank the BM25 top-k of the
nq-toy BEIR splits. Small and fast: its export/ is the cross-encoder of the seed pipeline
(dense top-500 -> rerank -> top-5). Build the data first: python -m dualenc.data.build_nq_toy.

python -m dualenc.train --config configs/cross_nq_toy.py --workdir workdirs/cross_nq_toy
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402


def get_config():
    c = configs.base_config()
    c.task = "cross"
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()
    c.data.train.path = configs.repo_path("data", "nq-toy", "train.json")
    c.data.train.format = "dpr"
    c.data.dev.path = configs.repo_path("data", "nq-toy")
    c.data.dev.split = "dev"
    c.data.test.path = configs.repo_path("data", "nq-toy")
    c.data.test.split = "test"
    c.data.num_negatives = 3
    c.cross.num_labels = 1
    c.cross.loss = "listwise"
    c.cross.max_length = 160
    c.cross.first_stage = "bm25"
    c.cross.rerank_top = 50
    c.cross.dev_rerank_top = 20
    c.cross.eval_metric = "nDCG@10"
    c.cross.patience = 2
    c.train.batch_size = 8
    c.train.num_steps = 60
    c.train.learning_rate = 3e-5
    c.train.warmup_steps = 6
    c.checkpoint.every_steps = 20
    c.eval.every_steps = 20
    c.log.every_steps = 5
    return configs.finalize(c)
