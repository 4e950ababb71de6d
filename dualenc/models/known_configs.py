"""Architecture configs of well-known hub models, for planning a run where the hub is out of reach.

`python -m dualenc.compile` needs shapes, not weights: a config naming
`google-bert/bert-base-uncased` must compile on a machine with no internet (this one, a laptop
preparing a pod run, a CI runner). `hf_config` reads a local dir's config.json, else asks the hub
for config.json only, else falls back to this table (the published config.json values that set
shapes: sizes, vocabulary, positions, DeBERTa's relative-position settings). A name in the table
is answered from it without asking the hub: the published configs of these checkpoints do not
change, and an offline hub request costs ~20 s of retries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_BERT = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "position_embedding_type": "absolute",
}


def _bert(layers: int, hidden: int, heads: int, **extra: Any) -> dict:
    return {
        **_BERT,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        **extra,
    }


_DEBERTA_V3 = {
    "model_type": "deberta-v2",
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-7,
    "max_position_embeddings": 512,
    "max_relative_positions": -1,
    "norm_rel_ebd": "layer_norm",
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "position_buckets": 256,
    "relative_attention": True,
    "share_att_key": True,
    "type_vocab_size": 0,
    "vocab_size": 128100,
}

_MINILM_L6 = _bert(6, 384, 12, intermediate_size=1536)
_MINILM_L12 = _bert(12, 384, 12, intermediate_size=1536)
_BERT_BASE = _bert(12, 768, 12)

KNOWN: dict[str, dict[str, Any]] = {
    "google-bert/bert-base-uncased": _BERT_BASE,
    "bert-base-uncased": _BERT_BASE,
    "google-bert/bert-large-uncased": _bert(24, 1024, 16),
    "bert-large-uncased": _bert(24, 1024, 16),
    "facebook/dpr-question_encoder-single-nq-base": _BERT_BASE,
    "facebook/dpr-ctx_encoder-single-nq-base": _BERT_BASE,
    "sentence-transformers/all-MiniLM-L6-v2": _MINILM_L6,
    "sentence-transformers/all-MiniLM-L12-v2": _MINILM_L12,
    "cross-encoder/ms-marco-MiniLM-L6-v2": _MINILM_L6,
    "cross-encoder/ms-marco-MiniLM-L-6-v2": _MINILM_L6,
    "BAAI/bge-base-en-v1.5": _BERT_BASE,
    "intfloat/e5-base-v2": _BERT_BASE,
    "distilbert/distilbert-base-uncased": {
        "model_type": "distilbert",
        "activation": "gelu",
        "dim": 768,
        "hidden_dim": 3072,
        "n_heads": 12,
        "n_layers": 6,
        "max_position_embeddings": 512,
        "vocab_size": 30522,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "sinusoidal_pos_embds": False,
    },
    "microsoft/deberta-v3-small": {
        **_DEBERTA_V3,
        "num_hidden_layers": 6,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "microsoft/deberta-v3-base": {
        **_DEBERTA_V3,
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "microsoft/deberta-v3-large": {
        **_DEBERTA_V3,
        "num_hidden_layers": 24,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
}
KNOWN["distilbert-base-uncased"] = KNOWN["distilbert/distilbert-base-uncased"]


def hf_config(name_or_path: str, *, hub: bool = True) -> tuple[dict, str]:
    """(config.json dict, where it came from): a local model dir, `KNOWN`, or the hub
    (config.json only). ValueError naming the known names when none has it."""
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8")), str(path)
    name = str(name_or_path)
    if name in KNOWN:
        return dict(KNOWN[name]), f"dualenc's table of known configs ({name})"
    if hub and not path.exists():
        try:
            from huggingface_hub import hf_hub_download

            got = hf_hub_download(name, "config.json")
            return json.loads(Path(got).read_text(encoding="utf-8")), f"hub {name}"
        except Exception:  # noqa: BLE001 - offline, unknown repo, auth: say what is known
            pass
    raise ValueError(
        f"model {name!r}: no config.json there, the hub is out of reach, and it is not one of "
        f"the known configs: {', '.join(sorted(KNOWN))}"
    )
