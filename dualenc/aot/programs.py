"""The real steps of a config as abstract programs: jitted function + sharded argument shapes.

`dualenc.compile` lowers these for a compile-only target, so they must need shapes only: the
architecture comes from `known_configs.hf_config` (local dir, hub, or the table), params and the
optimizer state are `jax.eval_shape`d and placed by the config's partition rules, and the batch is
the largest one the data pipeline can emit (every text at its max length, no packing): the
step's memory peak. The steps are the training engine's own (`biencoder.step`, `cross.step`,
`training.state.jit_train_step`), not copies, so what compiles here is what a pod runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import sharding
from dualenc.aot import flops as flops_lib
from dualenc.biencoder import loss_registry
from dualenc.biencoder.step import make_train_step as biencoder_step
from dualenc.cross.step import make_train_step as cross_step
from dualenc.models import dual_encoder, layers
from dualenc.models.cross_encoder import CrossEncoder
from dualenc.models.known_configs import hf_config
from dualenc.models.registry import get_arch
from dualenc.training import optim
from dualenc.training import state as state_lib

STEPS = ("train", "encode", "rerank")


@dataclasses.dataclass
class Program:
    """A step to lower: `fn(*args)` with `args` ShapeDtypeStructs carrying their shardings."""

    fn: Any  # jitted
    args: tuple
    model_flops: float  # analytic, whole step over the global batch (flops.py)
    describe: str
    source: str  # where the architecture came from


def arch_config(mcfg):
    """(model_type, the arch's config dataclass with the run's dtype / remat, source)."""
    hf, source = hf_config(str(mcfg.name_or_path))
    arch = get_arch(hf.get("model_type", "bert"))
    overrides = dict(mcfg.config_overrides) if mcfg.init_random else {}
    remat = layers.remat_setting(bool(mcfg.remat), str(mcfg.remat_policy))
    cfg = arch.config_cls.from_hf(hf, **overrides)
    return arch.model_type, dataclasses.replace(cfg, dtype=mcfg.dtype, remat=remat), source


def _struct(shape, dtype, mesh, spec=None) -> jax.ShapeDtypeStruct:
    spec = P(sharding.batch_axes(mesh)) if spec is None else spec
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _rng(config, mesh) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0, impl=config.train.rng_impl))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))


def _train_program(config, mesh, params, make_step, batch: dict, flops: float, what: str, src):
    """The engine's jitted train step (state donated) over abstract, rule-placed state."""
    num_steps = max(int(config.train.num_steps), 1000)
    tx, schedule = optim.make_optimizer(config.train, num_steps)
    state = state_lib.abstract_state(params, tx, mesh, state_lib.mesh_rules(config))
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    fn = state_lib.jit_train_step(make_step(tx, schedule), state_sh, mesh)
    return Program(fn, (state, batch, _rng(config, mesh)), flops, what, src)


def _placed(params, config, mesh):
    sh = sharding.param_shardings(params, state_lib.mesh_rules(config), mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, sh)


def biencoder(config, mesh, step: str) -> Program:
    arch, cfg, src = arch_config(config.model)
    pooling = config.model.pooling or ("cls" if arch == "deberta-v2" else "mean")
    spec = dual_encoder.EncoderSpec(arch, cfg, pooling, bool(config.model.normalize))
    tower = jax.eval_shape(functools.partial(dual_encoder.init_tower, spec), jax.random.key(0))
    d, b = config.data, int(config.train.batch_size)
    lq, lp, k1 = int(d.q_max_length), int(d.p_max_length), 1 + int(d.num_negatives)
    if step == "encode":
        rows = int(config.eval.get("batch_size", 0) or b)
        params = _placed(tower, config, mesh)

        def encode(params, ids, mask):
            return dual_encoder.embed(spec, params, ids, mask).astype(jnp.float32)

        ids = _struct((rows, lp), jnp.int32, mesh)
        out = NamedSharding(mesh, P(sharding.batch_axes(mesh)))
        fn = jax.jit(encode, out_shardings=out)
        flops = flops_lib.encode(cfg, rows, lp)
        return Program(fn, (params, ids, ids), flops, f"encode {rows} x {lp}", src)
    shared = bool(config.model.shared_towers)
    params = dual_encoder.init_dual_params(spec, None, shared, tower_params=tower)
    i32 = jnp.int32
    batch = {
        "q_input_ids": _struct((b, lq), i32, mesh),
        "q_attention_mask": _struct((b, lq), i32, mesh),
        "p_input_ids": _struct((b, k1, lp), i32, mesh),
        "p_attention_mask": _struct((b, k1, lp), i32, mesh),
        "p_ids": _struct((b, k1), i32, mesh),
        "q_pos_ids": _struct((b, 1), i32, mesh),
    }
    if config.loss.name in loss_registry.DISTILLATION:
        batch["teacher_scores"] = _struct((b, k1), jnp.float32, mesh)
    flops = flops_lib.biencoder_train(cfg, b, lq, lp, k1)
    what = f"biencoder train: {b} queries x {k1} passages, q{lq}/p{lp}"
    make = functools.partial(biencoder_step, config, spec)
    return _train_program(config, mesh, params, make, batch, flops, what, src)


def cross(config, mesh, step: str) -> Program:
    arch, cfg, src = arch_config(config.model)
    x = config.cross
    ce = CrossEncoder(arch, cfg, int(x.num_labels))
    params = ce.abstract_params()
    length, b = int(x.max_length), int(config.train.batch_size)
    if step in ("rerank", "encode"):
        rows = int(x.eval_batch_size)
        ids = _struct((rows, length), jnp.int32, mesh)

        def score(params, ids, mask, types):
            return ce.score(params, ids, mask, types)

        fn = jax.jit(score, out_shardings=NamedSharding(mesh, P(sharding.batch_axes(mesh))))
        flops = flops_lib.encode(cfg, rows, length)
        args = (_placed(params, config, mesh), ids, ids, ids)
        return Program(fn, args, flops, f"rerank {rows} pairs x {length}", src)
    g = 1 if config.data.train.format == "pairs" else 1 + int(config.data.num_negatives)
    batch = {k: _struct((b, g, length), jnp.int32, mesh) for k in ("input_ids", "attention_mask")}
    batch["token_type_ids"] = _struct((b, g, length), jnp.int32, mesh)
    if config.data.train.format == "pairs":
        label = jnp.int32 if str(x.loss) == "pair_ce" else jnp.float32
        batch["labels"] = _struct((b,), label, mesh)
    dropout = bool(config.train.dropout)
    make = functools.partial(cross_step, ce, x)
    flops = 3 * flops_lib.encode(cfg, b * g, length)
    what = f"cross train: {b} x {g} pairs x {length}"
    return _train_program(
        config, mesh, params, lambda tx, s: make(tx, s, dropout), batch, flops, what, src
    )


def build(config, mesh, step: str = "train") -> Program:
    """The Program of `config.task`'s `step` (train | encode | rerank) on `mesh`."""
    if step not in STEPS:
        raise ValueError(f"step {step!r}: one of {STEPS}")
    task = config.get("task", "biencoder")
    if task == "biencoder":
        if step == "rerank":
            raise ValueError("step 'rerank' is a cross-encoder's: use a task='cross' config")
        return biencoder(config, mesh, step)
    if task == "cross":
        return cross(config, mesh, step)
    raise ValueError(f"dualenc.compile: task {task!r} is not planned yet (biencoder, cross)")
