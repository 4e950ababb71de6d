"""A tiny random BERT (1 layer, width 32) on the MiniLM tokenizer, for tests.

`data.train.path` must be set by the caller (tests write a tiny DPR file into tmp_path).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402


def get_config():
    c = configs.base_config()
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()  # architecture family + tokenizer
    c.model.init_random = True
    c.model.pooling = "mean"
    c.model.normalize = True
    c.model.config_overrides = configs.config_dict.ConfigDict(
        {
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        }
    )
    c.data.train.format = "dpr"
    c.data.num_negatives = 1
    c.data.q_max_length = 16
    c.data.p_max_length = 16  # tiny passages fit: one compiled shape
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 1
    c.train.dropout = False
    c.checkpoint.every_steps = 2
    c.eval.every_steps = -1
    c.log.every_steps = 1
    c.export.enabled = False
    return configs.finalize(c)
