"""Supported architectures, keyed by the Hugging Face `model_type` of a config.json.

Modules are imported lazily so that one architecture's absence (or import cost) never blocks
another's use.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Where an architecture's config / base model / sequence-classification classes live."""

    model_type: str
    module: str  # e.g. 'dualenc.models.bert'
    config_name: str
    model_name: str
    seq_cls_name: str
    hf_prefix: str  # base-model attribute in HF `*ForSequenceClassification` ('bert')
    hf_model_class_name: str  # transformers class for `architectures` in config.json
    hf_seq_class_name: str
    uses_token_types: bool  # whether token_type_ids (segment ids) reach the model

    def _get(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    @property
    def config_cls(self) -> type:
        return self._get(self.config_name)

    @property
    def model_cls(self) -> type:
        return self._get(self.model_name)

    @property
    def seq_cls(self) -> type:
        return self._get(self.seq_cls_name)


ARCHS: dict[str, ArchSpec] = {
    "bert": ArchSpec(  # also MiniLM (all-MiniLM-L6-v2 and friends are `model_type: bert`)
        "bert",
        "dualenc.models.bert",
        "BertConfig",
        "BertModel",
        "BertForSequenceClassification",
        "bert",
        "BertModel",
        "BertForSequenceClassification",
        True,
    ),
    "distilbert": ArchSpec(
        "distilbert",
        "dualenc.models.distilbert",
        "DistilBertConfig",
        "DistilBertModel",
        "DistilBertForSequenceClassification",
        "distilbert",
        "DistilBertModel",
        "DistilBertForSequenceClassification",
        False,
    ),
    "deberta-v2": ArchSpec(
        "deberta-v2",
        "dualenc.models.deberta",
        "DebertaV2Config",
        "DebertaV2Model",
        "DebertaV2ForSequenceClassification",
        "deberta",
        "DebertaV2Model",
        "DebertaV2ForSequenceClassification",
        True,
    ),
}


def get_arch(model_type: str) -> ArchSpec:
    """The ArchSpec of a HF `model_type`; ValueError naming the supported ones otherwise."""
    try:
        return ARCHS[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported model_type values: {sorted(ARCHS)}"
        ) from None


def build_model(spec: ArchSpec, config: Any, *, seq_cls: bool = False, num_labels: int = 1):
    """The Linen module: base model, or `*ForSequenceClassification` with `num_labels`."""
    if seq_cls:
        return spec.seq_cls(config, num_labels=num_labels)
    return spec.model_cls(config)


def init_abstract(spec: ArchSpec, config: Any, *, seq_cls: bool = False, num_labels: int = 1):
    """Abstract params (ShapeDtypeStruct leaves) via `jax.eval_shape`: no memory, no compute."""
    model = build_model(spec, config, seq_cls=seq_cls, num_labels=num_labels)
    ids = jnp.ones((1, 4), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), ids, ids)
    return variables["params"]
