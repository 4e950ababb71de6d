"""The train state on the mesh and the jitted step: shared by every task.

State is `{step, params, opt_state}`: params placed by the partition rules (data, from the
config), optimizer moments sharded like their params, counters replicated. The step is jitted with
explicit in/out shardings and the state donated, and compiled ahead of time once per batch shape
(`CompiledStep`) so that the loop can report compile time apart from step time.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualenc import sharding
from dualenc.models import target


def apply_gradients(state, grads, tx, schedule, metrics: dict, num_tokens) -> tuple[dict, dict]:
    """The tail every task's step shares: the optimizer update, step + 1, and the metrics the
    loop logs (`grad_norm`, `lr`, `num_tokens` for tokens/s) added to the task's own (which hold
    `loss`). Returns (new state, metrics)."""
    params = state["params"]
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
        "step": state["step"] + 1,
        "params": optax.apply_updates(params, updates),
        "opt_state": opt_state,
    }
    metrics = {
        **metrics,
        "grad_norm": optax.tree.norm(grads),
        "lr": schedule(state["step"]),
        "num_tokens": num_tokens.astype(jnp.float32),  # global batch (all hosts)
    }
    return new_state, metrics


def build_mesh(config):
    """The device mesh of `mesh.shape` (axes data / fsdp / ...)."""
    return sharding.make_mesh(tuple(config.mesh.shape))


def mesh_rules(config) -> list:
    """`mesh.rules` as (regex, spec) tuples."""
    return [tuple(r) for r in config.mesh.rules]


def state_shardings(params, tx, mesh, rules) -> dict:
    """Shardings of {step, params, opt_state} for `params` (arrays or ShapeDtypeStructs): params
    by the partition rules, optimizer moments like their params, counters replicated."""
    rep = NamedSharding(mesh, P())
    p_sh = sharding.param_shardings(params, rules, mesh)
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, p_sh, transform_non_params=lambda _: rep
    )
    return {"step": rep, "params": p_sh, "opt_state": opt_sh}


def abstract_state(params, tx, mesh, rules) -> dict:
    """ShapeDtypeStructs (with shardings) of the state, via `jax.eval_shape`: a restore target
    that needs neither the pretrained weights nor device memory."""
    shapes = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
    }
    shapes["opt_state"] = jax.eval_shape(tx.init, shapes["params"])
    sh = state_shardings(shapes["params"], tx, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)


def create_state(params, tx, mesh, rules) -> tuple[dict, dict]:
    """(state on the mesh, state shardings): params placed by the partition rules, the optimizer
    state initialised under jit with its shardings declared."""
    sh = state_shardings(params, tx, mesh, rules)
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, sh["params"])
    state = {
        "step": jax.device_put(jnp.zeros((), jnp.int32), sh["step"]),
        "params": params,
        "opt_state": jax.jit(tx.init, out_shardings=sh["opt_state"])(params),
    }
    return state, sh


def jit_train_step(step_fn, state_sh, mesh):
    """jit with explicit in/out shardings; the state (argument 0) is donated."""
    rep = NamedSharding(mesh, P())
    return jax.jit(
        step_fn,
        in_shardings=(state_sh, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )


class CompiledStep:
    """A jitted step compiled ahead of time (`lower().compile()`) once per batch signature, so
    the loop can report compile time apart from step time. Called like the jitted step. The trace
    chooses its paths (attention, kernels) for `mesh`'s devices (`target.compiling_for`)."""

    def __init__(self, jitted, mesh):
        self.jitted, self.mesh = jitted, mesh
        self.compile_seconds = 0.0
        self._compiled: dict[tuple, Any] = {}

    def __call__(self, state, batch, rng):
        key = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))
        fn = self._compiled.get(key)
        if fn is None:
            t0 = time.perf_counter()
            with target.compiling_for(self.mesh):
                lowered = self.jitted.lower(state, batch, rng)
            fn = self._compiled[key] = lowered.compile()
            dt = time.perf_counter() - t0
            self.compile_seconds += dt
            shapes = {k: shape for k, shape, _ in key}
            logging.info("compiled the train step for %s in %.1fs", shapes, dt)
        return fn(state, batch, rng)

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)


def make_rng(config, mesh) -> jax.Array:
    """The run's base key (`seed`, `train.rng_impl`), made under jit so that it is one global
    replicated array on every host; steps fold their step number into it."""
    seed, impl = int(config.seed), config.train.rng_impl
    return jax.jit(
        lambda: jax.random.key(seed, impl=impl), out_shardings=NamedSharding(mesh, P())
    )()
