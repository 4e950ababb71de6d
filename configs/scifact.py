"""The SciFact recipe: all-MiniLM-L6-v2 fine-tuned on the carved SciFact train split (80 % of
train, data.splits.SCIFACT_CARVE, seed 20261123) with BM25-mined hard negatives, chosen on the
carved DEV split (the other 20 %), never on test. The study (configs/study/scifact.py) picked the
strategy (MNRL + BM25 negatives); a sweep of length and learning rate on the same dev picked
10 epochs (200 steps) at 1e-4.

python -m dualenc.train --config configs/scifact.py --workdir workdirs/scifact
Dev nDCG@10 is evaluated at the end (data.dev); test before/after (eval.before_after_split), both
at the model's max_length 256.

Result (2026-11-24): test nDCG@10 0.6451 -> 0.7758; sweep and hybrid in docs/results.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from dualenc.data import splits  # noqa: E402
from dualenc.io import data_dir  # noqa: E402


def get_config():
    c = configs.base_config()
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()
    c.model.pooling = "mean"
    c.model.normalize = True
    root = splits.ensure_carved(
        data_dir() / "scifact", configs.repo_path("workdirs", "scifact_carved")
    )
    c.data.train.path = root
    c.data.train.format = "beir"
    c.data.train.split = splits.TRAIN_SPLIT
    c.data.dev.path = root
    c.data.dev.split = splits.DEV_SPLIT  # the carved dev: never tune on test
    c.data.num_negatives = 1
    c.data.mine_negatives = "bm25"
    c.data.mine_depth = 30
    c.data.mine_skip = 3
    c.data.q_max_length = 48
    c.data.p_max_length = 128
    c.data.pad_to_max_length = True  # one compiled shape: compiles cost more than padding here
    c.train.batch_size = 32
    c.train.num_epochs = 10.0
    c.train.learning_rate = 1e-4
    c.train.warmup_steps = 5
    c.train.schedule = "linear"
    c.train.weight_decay = 0.01
    c.train.grad_clip_norm = 1.0
    c.loss.name = "contrastive"
    c.loss.scale = 20.0
    c.checkpoint.every_steps = 25
    c.eval.every_steps = 0  # dev (carved) at the end only
    c.eval.before_after_split = "test"  # test nDCG@10 before and after, reported next to dev
    c.eval.max_length = 0  # the model's 256
    c.eval.k_values = (10, 100)
    c.log.every_steps = 5
    return configs.finalize(c)
