"""TSDAE domain adaptation of all-MiniLM-L6-v2 on the SciFact corpus (unsupervised: documents
split into sentences, no queries, no labels); the paper's recipe (Wang et al. 2021, and
sentence-transformers' TSDAE example): 60 % of the words deleted, a decoder tied to the encoder,
batch 8, lr 3e-5 constant, 10,000 sentences, one epoch. The model's own pooling (mean) and
normalisation are kept: the adapted embedding is the one the retriever uses.

python -m dualenc.train --config configs/tsdae_scifact.py --workdir workdirs/tsdae_scifact
Then as the start of the supervised SciFact recipe (adaptive pre-training):
python -m dualenc.train --config configs/scifact.py --workdir W \
    --config.init_from=workdirs/tsdae_scifact/export

SciFact test nDCG@10 is evaluated before and after (zero-shot, eval.before_after_split). TSDAE
is a pre-training step: on an already trained retriever it erases the supervised geometry, so
use the export as `init_from` (second command above).

Result (2026-11-25): the recipe from this export, test nDCG@10 0.7354 (docs/results.md#tsdae).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from dualenc.io import data_dir  # noqa: E402


def get_config():
    c = configs.base_config()
    c.task = "tsdae"
    c.seed = 0
    c.model.name_or_path = configs.minilm_path()
    c.model.normalize = True
    c.tsdae.path = str(data_dir() / "scifact")
    c.tsdae.format = "beir"
    c.tsdae.max_sentences = 10_000
    c.tsdae.del_ratio = 0.6
    c.tsdae.max_length = 64
    c.train.batch_size = 8
    c.train.num_epochs = 1.0
    c.train.learning_rate = 3e-5
    c.train.schedule = "constant"
    c.train.weight_decay = 0.0
    c.checkpoint.every_steps = 250
    c.data.dev.path = str(data_dir() / "scifact")
    c.eval.before_after_split = "test"
    c.eval.k_values = (10, 100)
    c.log.every_steps = 50
    return configs.finalize(c)
