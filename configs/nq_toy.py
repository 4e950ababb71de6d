"""The demo: fine-tune all-MiniLM-L6-v2 on the nq-toy DPR data (in-batch + 1 hard negative).

Tuned for a 2-core CPU: `make demo` (= python -m dualenc.train --config configs/nq_toy.py
--workdir DIR) evaluates test retrieval before and after training and exports the model.
Build the data first: python -m dualenc.data.build_nq_toy.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402


def get_config():
    c = configs.base_config()
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()
    c.model.pooling = "mean"
    c.model.normalize = True
    c.data.train.path = configs.repo_path("data", "nq-toy", "train.json")
    c.data.train.format = "dpr"
    c.data.dev.path = configs.repo_path("data", "nq-toy")
    c.data.dev.split = "dev"
    c.data.num_negatives = 1
    c.data.q_max_length = 32
    c.data.p_max_length = 96
    c.data.pad_to_max_length = True  # one compiled shape: compiles cost more than padding here
    c.train.batch_size = 32
    c.train.num_steps = 40
    c.train.learning_rate = 5e-5
    c.train.warmup_steps = 4
    c.train.schedule = "linear"
    c.train.weight_decay = 0.01
    c.train.grad_clip_norm = 1.0
    c.loss.scale = 20.0
    c.checkpoint.every_steps = 20
    c.eval.every_steps = -1  # no periodic dev eval in the demo: before/after on test instead
    c.eval.before_after_split = "test"
    c.eval.max_length = 128  # nq-toy passages are ~100 words
    c.log.every_steps = 5
    return configs.finalize(c)
