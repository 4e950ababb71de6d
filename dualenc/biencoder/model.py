"""The bi-encoder's model set-up from `config.model`: the base encoder and the dual params.

Shared by the tasks that train a bi-encoder tower (the bi-encoder task itself, and TSDAE, which
adapts the same tower): pretrained weights, or a random architecture for tests and from-scratch
runs; abstract params when a resume will restore the real ones from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np

from dualenc.models import dual_encoder, layers, loading
from dualenc.models.registry import get_arch
from dualenc.tokenization import load_tokenizer


def load_base_encoder(mcfg, *, weights: bool = True) -> loading.Encoder:
    """The Encoder of `model.name_or_path` (tokenizer, pooling, architecture) with the config's
    dtype / remat / pooling / normalize; random weights if `model.init_random`. `weights=False`
    leaves ShapeDtypeStructs as params (a resume restores the real ones from the checkpoint)."""
    if mcfg.init_random:
        return _random_encoder(mcfg, weights)
    if len(mcfg.config_overrides):
        raise ValueError("model.config_overrides changes the architecture: set model.init_random")
    enc = load_pretrained(
        str(mcfg.name_or_path), mcfg.dtype, mcfg.pooling or None, bool(mcfg.normalize), weights
    )
    cfg = dataclasses.replace(
        enc.config,
        dtype=mcfg.dtype,
        remat=layers.remat_setting(bool(mcfg.remat), mcfg.remat_policy),
    )
    return dataclasses.replace(enc, config=cfg, spec=dataclasses.replace(enc.spec, config=cfg))


@functools.lru_cache(maxsize=4)
def load_pretrained(path: str, dtype: str, pooling, normalize: bool, weights: bool):
    """Cached: tests and the benchmark build several trainers from one model dir."""
    return loading.load_encoder(
        path, dtype=dtype, pooling=pooling, normalize=normalize, weights=weights
    )


def _random_encoder(mcfg, weights: bool) -> loading.Encoder:
    """An Encoder with random weights of `name_or_path`'s architecture (config.json there, with
    `config_overrides`) and its tokenizer; the pretrained weights are never read."""
    root = Path(mcfg.name_or_path)
    if not (root / "config.json").is_file():
        raise ValueError(f"model.init_random needs a local model dir with config.json: {root}")
    hf = json.loads((root / "config.json").read_text())
    cfg = get_arch(hf["model_type"]).config_cls.from_hf(hf)
    overrides = dict(mcfg.config_overrides)
    bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
    if bad:
        raise ValueError(f"model.config_overrides: unknown fields {bad} of {type(cfg).__name__}")
    cfg = dataclasses.replace(
        cfg,
        dtype=mcfg.dtype,
        remat=layers.remat_setting(bool(mcfg.remat), mcfg.remat_policy),
        **overrides,
    )
    spec = dual_encoder.EncoderSpec(
        arch=hf["model_type"], config=cfg, pooling=mcfg.pooling or "mean", normalize=mcfg.normalize
    )
    if weights:
        params = random_tower_params(spec, int(mcfg.init_seed))
    else:
        init = functools.partial(dual_encoder.init_tower, spec)
        params = jax.eval_shape(init, jax.random.key(int(mcfg.init_seed)))
    return loading.Encoder(
        arch=spec.arch,
        config=cfg,
        params=params,
        tokenizer=load_tokenizer(root),
        pooling=spec.pooling,
        normalize=spec.normalize,
        max_length=int(cfg.max_position_embeddings),
        source="random init",
        spec=spec,
        model_dir=root,
    )


def random_tower_params(spec, seed: int):
    """Freshly initialised tower params for `spec` (tiny test models, training from scratch)."""
    return jax.tree.map(np.asarray, dual_encoder.init_tower(spec, jax.random.key(seed)))


def initial_dual_params(base, shared: bool) -> dict:
    """DualEncoder params: {'encoder': tower} (tied) or {'q_encoder', 'p_encoder'} (two copies);
    ShapeDtypeStructs when `base` holds abstract params."""
    params = dual_encoder.init_dual_params(base.spec, None, shared, tower_params=base.params)
    return jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else np.array(x), params)


def tower_encoders(base, host_params) -> tuple[loading.Encoder, loading.Encoder]:
    """(query Encoder, passage Encoder) holding `host_params` (numpy, e.g. multihost.to_host)."""
    if "encoder" in host_params:
        enc = loading.encoder_from_params(base, host_params["encoder"])
        return enc, enc
    return (
        loading.encoder_from_params(base, host_params["q_encoder"]),
        loading.encoder_from_params(base, host_params["p_encoder"]),
    )
