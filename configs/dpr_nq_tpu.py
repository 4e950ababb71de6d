"""DPR on Natural Questions at TPU scale (Karpukhin et al. 2020 recipe). Not run on CPU.

BERT-base, separate query / passage towers, CLS pooling, dot product (no normalisation),
global batch 128 with in-batch negatives + 1 BM25 hard negative, lr 2e-5, 40 epochs, linear
warmup/decay, grad-norm clip 2.0, bf16 compute, data parallel over all devices with FSDP of the
large matrices. NQ train (58,880 questions) / dev from the DPR release converted to DPR JSON.

On every worker of a TPU VM pod slice (installs `.[tpu]` there; the workdir must be gs://):

launch/tpu_pod.sh --tpu NAME --zone ZONE -- --config configs/dpr_nq_tpu.py \\
    --workdir gs://BUCKET/dpr_nq --config.data.train.path=/data/dpr/nq-train.json \\
    --config.data.dev.path=/data/nq-beir
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402


def get_config():
    c = configs.base_config()
    c.seed = 0
    c.model.name_or_path = "google-bert/bert-base-uncased"
    c.model.pooling = "cls"
    c.model.normalize = False
    c.model.shared_towers = False
    c.model.dtype = "bfloat16"
    c.model.remat = False
    c.data.train.path = "/data/dpr/nq-train.json"
    c.data.train.format = "dpr"
    c.data.dev.path = "/data/nq-beir"
    c.data.dev.split = "dev"
    c.data.num_negatives = 1
    c.data.q_max_length = 64
    c.data.p_max_length = 256
    c.train.batch_size = 128
    c.train.num_epochs = 40.0
    c.train.learning_rate = 2e-5
    c.train.warmup_steps = 1237
    c.train.schedule = "linear"
    c.train.weight_decay = 0.0
    c.train.grad_clip_norm = 2.0
    c.train.dropout = True
    c.loss.scale = 1.0  # DPR: raw dot-product logits
    c.mesh.shape = (-1, 1)  # all devices on 'data'; e.g. (-1, 4) to also shard weights (FSDP)
    c.mesh.rules = configs.FSDP_RULES
    c.checkpoint.every_steps = 2000
    c.checkpoint.keep = 3
    c.eval.every_steps = 5000
    c.eval.k_values = (20, 100)
    c.eval.max_queries = 2000
    c.log.every_steps = 100
    return configs.finalize(c)
