"""Adaptive relevance margins on nq-toy (DPR data with 1 BM25 hard negative per question).

python -m dualenc.train --config configs/armargin_nq_toy.py:VARIANT --workdir DIR
VARIANT: in_batch | mined | pairs | static (see configs/armargin_scifact.py); error form
--config.loss.margin_err=squared|l1|softplus; --config.loss.margin_stop_gradient=True.
Here 'mined' uses the DPR file's own hard negatives. Build the data: make nq-toy.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from configs import armargin_scifact, nq_toy  # noqa: E402


def get_config(variant: str = "in_batch"):
    c = nq_toy.get_config()
    c.unlock()
    armargin_scifact.apply_variant(c, variant)
    c.eval.before_after_split = "test"
    return configs.finalize(c)
