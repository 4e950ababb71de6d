"""Cross-encoder: (query, passage) pairs in one sequence → logits, via the arch's
`*ForSequenceClassification` (rerankers use num_labels=1, pair classifiers num_labels=k).

Params are the HF `*ForSequenceClassification` layout (`bert/...` + `classifier/...`), so
`convert.params_from_state_dict` loads a transformers cross-encoder checkpoint directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from dualenc.models.dual_encoder import init_module
from dualenc.models.registry import ArchSpec, get_arch, init_abstract


@dataclasses.dataclass(frozen=True)
class CrossEncoder:
    """An architecture + config + label count; methods are pure functions of `params`."""

    arch: str  # HF model_type
    config: Any
    num_labels: int = 1

    @property
    def spec(self) -> ArchSpec:
        return get_arch(self.arch)

    @property
    def model(self):
        """The Linen `*ForSequenceClassification` module."""
        return self.spec.seq_cls(self.config, num_labels=self.num_labels)

    def init(self, rng) -> dict:
        """Random params, as the arch's initialisers."""
        return init_module(self.model, rng)

    def abstract_params(self):
        """ShapeDtypeStruct params, for `convert.params_from_state_dict`."""
        return init_abstract(self.spec, self.config, seq_cls=True, num_labels=self.num_labels)

    def from_base(self, base_params: Mapping[str, Any], rng) -> dict:
        """Params with a pretrained base model (e.g. an encoder tower) and a fresh head.

        Base leaves override the fresh ones; those the base lacks (a BERT pooler) stay random.
        """
        params = self.init(rng)
        prefix = self.spec.hf_prefix
        params[prefix] = _overlay(params[prefix], base_params)
        return params

    def score(
        self,
        params,
        input_ids,
        attention_mask,
        token_type_ids=None,
        deterministic: bool = True,
        rngs=None,
    ):
        """(B, L) pair ids (+ segment ids for BERT) → float32 logits (B, num_labels)."""
        if rngs is not None and not isinstance(rngs, Mapping):
            rngs = {"dropout": rngs}
        logits = self.model.apply(
            {"params": params}, input_ids, attention_mask, token_type_ids, deterministic, rngs=rngs
        )
        return logits.astype(jnp.float32)


def _overlay(fresh: Mapping[str, Any], base: Mapping[str, Any]) -> dict:
    """`fresh` with every leaf that `base` has replaced; shapes must agree."""
    out = dict(fresh)
    for key, value in base.items():
        if key not in fresh:
            raise ValueError(f"base params have {key!r}, which the cross-encoder lacks")
        if isinstance(value, Mapping):
            out[key] = _overlay(fresh[key], value)
        else:
            if np.shape(value) != np.shape(fresh[key]):
                raise ValueError(
                    f"base param {key!r} has shape {np.shape(value)}, expected "
                    f"{np.shape(fresh[key])}"
                )
            out[key] = value
    return out
