"""Adaptive relevance margins (Gienapp et al., ICTIR 2025) on SciFact: all variants.

python -m dualenc.train --config configs/armargin_scifact.py:VARIANT --workdir DIR
VARIANT (default in_batch):
  in_batch  per-query in-batch form: every other passage of the global batch is a negative
  mined     in-batch + 1 BM25-mined hard negative per query (more candidates per query)
  pairs     (query, own BM25 negative) pairs only, the paper's triple form
  static    in-batch with a static target t = loss.static_margin (0.5) instead of s(d+,d-)/2+1/2
Error form: --config.loss.margin_err=squared|l1|softplus; stop-gradient through the target:
--config.loss.margin_stop_gradient=True (off by default, as the authors have it).
Trains on the carved SciFact train split (80 %) and evaluates on the carved dev (20 %, seed
20261123, dualenc.data.splits.SCIFACT_CARVE); the carve is written once to workdirs/scifact_carved.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from dualenc.data import splits  # noqa: E402
from dualenc.io import data_dir  # noqa: E402

VARIANTS = ("in_batch", "mined", "pairs", "static")


def apply_variant(c, variant: str):
    """Sets loss.* and data.num_negatives / mining for one adaptive-margin variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    c.loss.name = "adaptive_margin"
    c.loss.margin_err = "squared"
    c.loss.margin_target = "static" if variant == "static" else "adaptive"
    c.loss.margin_in_batch = variant != "pairs"
    c.data.num_negatives = 1 if variant in ("mined", "pairs") else 0
    return c


def get_config(variant: str = "in_batch"):
    c = configs.base_config()
    c.model.name_or_path = configs.minilm_path()
    c.model.pooling = "mean"
    root = splits.ensure_carved(
        data_dir() / "scifact", configs.repo_path("workdirs", "scifact_carved")
    )
    c.data.train.path = root
    c.data.train.format = "beir"
    c.data.train.split = splits.TRAIN_SPLIT
    c.data.dev.path = root
    c.data.dev.split = splits.DEV_SPLIT
    apply_variant(c, variant)
    c.data.mine_negatives = "bm25" if c.data.num_negatives else ""
    c.data.mine_depth = 30
    c.data.mine_skip = 3
    c.data.q_max_length = 48
    c.data.p_max_length = 128
    c.data.pad_to_max_length = True
    c.train.batch_size = 32
    c.train.num_epochs = 1.0
    c.train.learning_rate = 3e-5
    c.train.warmup_steps = 2
    c.checkpoint.every_steps = 25
    c.eval.max_length = 128
    c.log.every_steps = 5
    return configs.finalize(c)
