"""Default evaluation config, inside the package so that a wheel install has it.

The flag form of `dualenc.evaluate` builds exactly this ConfigDict; configs/eval/default.py
re-exports it for `--config configs/eval/default.py` and for experiment configs built on it.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ""  # encoder dir / hub id (dense and hybrid)
    c.data = ""  # BEIR dir: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv
    c.split = "test"
    c.qrels_file = ""  # overrides qrels/<split>.tsv (e.g. a file with a header line)
    # overrides the data dir's corpus.jsonl[.gz]: a TFDS dataset (`dualenc.build_tfds`, read with
    # random access, each host its own range), a JSONL(.gz) or TSV(.gz) corpus file
    c.corpus = ""
    c.index = "exact"  # exact | scann | bm25 | hybrid
    c.output = ""
    c.k = 100  # depth of the written run
    c.fusion_depth = 1000  # candidates per system for hybrid fusion
    c.batch_size = 64
    c.dtype = "float32"  # compute dtype of the encoders and the reranker: float32 | bfloat16
    c.matmul_precision = "default"  # default | high | highest | ... (models.target.PRECISIONS)
    c.max_length = 0  # 0: the encoder's own max_length
    c.chunk_size = 0  # > 0: dense search over windows of this many text tokens, MaxP per doc
    c.chunk_overlap = 32  # tokens shared by consecutive windows (chunk_size > 0)
    c.cache = True  # reuse corpus embeddings and BM25 indexes across runs (--nocache: off)
    c.cache_dir = ""  # "": $DUALENC_CACHE_DIR, else $XDG_CACHE_HOME/dualenc, else ~/.cache/dualenc
    c.shard_size = 32768  # corpus rows encoded (and searched) at a time, one .npy shard each
    c.similarity = "dot"  # dot | cos
    c.quantize = ""  # "" (float32) | int8 | binary: compressed exact index (index.quantized)
    c.rescore_multiplier = 4  # quantize: rescore the top multiplier * k in float32; 0: no rescore
    c.rescore_with = ""  # quantize: "" the index's own codes | int8 | float (a copy kept aside)
    c.truncate_dim = 0  # > 0: Matryoshka, search the first d dims (renormalised if normalising)
    c.calibration_size = 10_000  # int8: corpus vectors sampled for the per-dim ranges
    c.fusion = "minmax"  # minmax | zscore | rrf
    c.hybrid_weight = 1.0  # weight of the dense run: bm25 + w * dense
    c.tune_split = ""  # e.g. "train": tune hybrid_weight on that split's queries
    c.tune_metric = "nDCG@10"
    c.tune_grid = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0, 3.0, 5.0)
    c.rerank_model = ""  # a cross-encoder dir (*ForSequenceClassification): rerank the run
    c.rerank_top = 100  # first-stage docs rescored per query (the first stage retrieves ≥ this)
    c.rerank_fusion_weight = 0.0  # > 0: first stage + w * CE (normalised by c.fusion); 0: CE alone
    c.final_top = 0  # cut the final run (and so its metrics) to the top-N; 0 keeps k docs
    c.save_index = ""  # write the searched index (for `dualenc.search`)
    c.measures = ("nDCG@10", "RR@10", "R@10", "R@100", "AP", "P@10")
    c.answer_ks = (5, 20, 50, 100)
    c.tag = ""  # run tag; default from the index kind
    c.progress = True
    c.scann = ml_collections.ConfigDict()
    c.scann.num_leaves = config_dict.placeholder(int)
    c.scann.num_leaves_to_search = config_dict.placeholder(int)
    c.scann.reorder = config_dict.placeholder(int)
    c.scann.training_sample_size = config_dict.placeholder(int)
    c.scann.brute_force_below = 20_000
    c.lock()
    return c
