"""STS benchmark cross-encoder: all-MiniLM-L6-v2 + a fresh 1-logit head, BCE on score / 5 (the
sentence-transformers CrossEncoder recipe), best checkpoint by dev Spearman.

Splits: sts-train 5,749 / sts-dev 1,500 / sts-test 1,379 pairs (../shared/data/stsbenchmark).
python -m dualenc.train --config configs/cross_stsb.py --workdir workdirs/cross_stsb

Its export is also the intermediate-task start of configs/cross_mrpc.py's STS-B variant
(`model.fresh_head`): see that file.

Result (2026-11-25): dev Spearman 86.86 -> test Spearman 83.76 (run in docs/results.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from dualenc.io import data_dir  # noqa: E402


def get_config():
    c = configs.base_config()
    c.task = "cross"
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()
    root = data_dir() / "stsbenchmark"
    c.data.train.format = "pairs"
    c.data.train.path = str(root / "sts-train.csv")
    c.data.dev.path = str(root / "sts-dev.csv")
    c.data.test.path = str(root / "sts-test.csv")
    c.cross.num_labels = 1
    c.cross.loss = "bce"
    c.cross.label_scale = 5.0  # targets score / 5 in [0, 1]
    c.cross.max_length = 128
    c.cross.eval_metric = "spearman"
    c.cross.symmetric = False
    c.train.batch_size = 32
    c.train.num_epochs = 4.0  # 716 steps
    c.train.learning_rate = 1e-4  # what dev chose for this model on MRPC
    c.train.warmup_steps = 72  # 10 %, as sentence-transformers' STS-B example
    c.train.schedule = "linear"
    c.train.weight_decay = 0.01
    c.train.dropout = True
    c.checkpoint.every_steps = 90
    c.eval.every_steps = 90
    c.log.every_steps = 10
    return configs.finalize(c)
