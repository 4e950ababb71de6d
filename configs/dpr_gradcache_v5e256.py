"""DPR with 65,536 exact in-batch passages per step on a TPU v5e-256 (GradCache).

32,768 questions x (positive + 1 BM25 hard negative) = 65,536 passages in one contrastive softmax
over the whole global batch (every question scores every passage, on every chip), BERT-base
towers in bf16. GradCache (`train.cache_chunk_size`) embeds the batch in chunks of 2,048 rows (8
per chip) without activations, takes the loss gradient w.r.t. the embeddings, then replays each
chunk under its vjp (same dropout masks): exact full-batch gradients with the activation memory
of 8 sequences per chip. Proven without a pod:

python -m dualenc.compile --config configs/dpr_gradcache_v5e256.py --target tpu:v5e-256

(figures in docs/results.md). Launch as configs/dpr_nq_tpu.py says.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import configs  # noqa: E402
from configs import dpr_nq_tpu  # noqa: E402


def get_config():
    c = dpr_nq_tpu.get_config()
    c.train.batch_size = 32768  # questions; x 2 passages = 65,536 in-batch passages
    c.train.cache_chunk_size = 2048  # rows per GradCache chunk: 8 per chip on 256 chips
    c.train.warmup_steps = 100
    c.train.learning_rate = 1e-4  # a larger batch (DPR's 128 used 2e-5)
    c.mesh.shape = (-1, 1)
    c.mesh.rules = configs.FSDP_RULES
    return c
