"""MRPC paraphrase classification: all-MiniLM-L6-v2 + a fresh 2-label head, pair cross-entropy,
best checkpoint by dev F1 (threshold chosen on dev, applied to test).

GLUE split: train 3,668 / dev 408 (glue/*.tsv); test 1,725 labelled pairs (msr_paraphrase_test.txt).
python -m dualenc.train --config configs/cross_mrpc.py --workdir workdirs/cross_mrpc

Measured (seed 0, 2-core CPU): best dev F1 0.8780 at step 342, test F1 0.8483 at the dev
threshold. `--config.cross.symmetric=True` (both orders in training and scoring, 687 steps):
dev F1 0.8801, test F1 0.8455: within one seed's noise on dev at twice the steps, so off here.
lr 1e-4 (2026-11-24, chosen on dev): 3 epochs best dev F1 0.8819 (step 240) -> test accuracy
0.7971, F1 0.8516, confusion [[371, 207], [143, 1004]]; 6 epochs (warmup 68) best dev 0.8816 ->
test F1 0.8584. Dev picks 3 epochs at 1e-4, the setting below. Goal 0.86 not reached.
Restarts of this setting (2026-11-24), best dev F1 / test F1: seed 0 0.8819 / 0.8516, seed 1
0.8790 / 0.8498, seed 2 0.8808 / 0.8531, batch 16 0.8739 / 0.8513: dev keeps seed 0; test F1 sits
at 0.850-0.853 whatever the seed, so the gap to 0.86 is the model, not the draw.

Variant 'stsb' (2026-11-25; `--config configs/cross_mrpc.py:stsb`): start from the STS-B
cross-encoder of configs/cross_stsb.py (itself all-MiniLM-L6-v2 + a fresh head; train that into
workdirs/cross_stsb first), keep its encoder, fresh 2-label head, same recipe. Best dev F1 / test
accuracy / test F1 (dev threshold) / confusion, 3 seeds:
  seed 0 0.8848 (step 120) / 0.8110 / 0.8672 / [[335, 243], [83, 1064]]
  seed 1 0.8881 (step 200) / 0.8145 / 0.8616 / [[409, 169], [151, 996]]
  seed 2 0.8919 (step 280) / 0.8232 / 0.8720 / [[381, 197], [108, 1039]]
Every run's dev F1 beats the single-stage runs' best (0.8819); dev picks seed 2: test accuracy
0.8232, F1 0.8720 (goal 0.86 met; every seed >= 0.86).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from dualenc.io import data_dir  # noqa: E402


def get_config(variant: str = ""):
    """variant 'stsb': start from configs/cross_stsb.py's export (its encoder, a fresh head)."""
    c = configs.base_config()
    c.task = "cross"
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()
    root = data_dir() / "mrpc"
    c.data.train.format = "pairs"
    c.data.train.path = str(root / "glue" / "train.tsv")
    c.data.dev.path = str(root / "glue" / "dev.tsv")
    c.data.test.path = str(root / "msr_paraphrase_test.txt")
    c.cross.num_labels = 2
    c.cross.loss = "pair_ce"
    c.cross.label_names = ("not_equivalent", "equivalent")
    c.cross.max_length = 128
    c.cross.eval_metric = "F1"
    c.cross.patience = 4
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.learning_rate = 1e-4  # dev F1 0.8819 vs 0.8780 at 5e-5
    c.train.warmup_steps = 34
    c.train.schedule = "linear"
    c.train.weight_decay = 0.01
    c.train.dropout = True
    c.checkpoint.every_steps = 40
    c.eval.every_steps = 40
    c.log.every_steps = 10
    if variant == "stsb":
        c.model.name_or_path = configs.repo_path("workdirs", "cross_stsb", "export")
        c.model.fresh_head = True
    elif variant:
        raise ValueError(f"configs/cross_mrpc.py: unknown variant {variant!r} ('' | 'stsb')")
    return configs.finalize(c)
