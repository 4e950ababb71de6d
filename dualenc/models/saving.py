"""Trained encoders out: Hugging Face and sentence-transformers dirs that PyTorch loads unchanged.

Kept apart from `loading` (which reads these layouts) so that exporting is one concern:
`save_sentence_transformers` writes Transformer + Pooling [+ Normalize], `save_hf` a plain
AutoModel dir with `dualenc.json` (pooling / normalize / max_length) so `load_encoder` round-trips.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from dualenc import multihost
from dualenc.io import atomic_dir
from dualenc.models.convert import state_dict_from_params
from dualenc.models.loading import DUALENC_META, ST_POOLING, TOKENIZER_FILES, Encoder
from dualenc.models.registry import get_arch


def save_hf(encoder: Encoder, out_dir: str | os.PathLike) -> Path:
    """Writes a Hugging Face model dir (config, safetensors, tokenizer) for AutoModel.

    dualenc.json records pooling / normalize / max_length so `load_encoder` round-trips it.
    """
    out_dir = multihost.epath(out_dir)  # local or gs://; built locally, then moved in
    with atomic_dir(out_dir) as tmp:
        _write_model_files(encoder, tmp)
        meta = {
            "pooling": encoder.pooling,
            "normalize": bool(encoder.normalize),
            "max_length": int(encoder.max_length),
            "weights_hash": encoder.weights_hash(),
        }
        _dump(tmp / DUALENC_META, meta)
    return out_dir


def save_sentence_transformers(encoder: Encoder, out_dir: str | os.PathLike) -> Path:
    """Writes a sentence-transformers dir (Transformer + Pooling [+ Normalize]) for PyTorch."""
    if encoder.pooling not in ST_POOLING:
        raise ValueError(
            f"pooling {encoder.pooling!r} has no sentence-transformers equivalent; "
            f"use one of {sorted(ST_POOLING)} (or save_hf)"
        )
    out_dir = multihost.epath(out_dir)  # local or gs://; built locally, then moved in
    with atomic_dir(out_dir) as tmp:
        _write_model_files(encoder, tmp)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if encoder.normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
            (tmp / "2_Normalize").mkdir()
            _dump(tmp / "2_Normalize" / "config.json", {})
        _dump(tmp / "modules.json", modules)
        (tmp / "1_Pooling").mkdir()
        _dump(tmp / "1_Pooling" / "config.json", _st_pooling_config(encoder))
        _dump(
            tmp / "sentence_bert_config.json",
            {"max_seq_length": int(encoder.max_length), "do_lower_case": False},
        )
        _dump(
            tmp / "config_sentence_transformers.json",
            {
                "__version__": {"dualenc": _version()},
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine" if encoder.normalize else "dot",
            },
        )
        (tmp / "README.md").write_text(_readme(encoder), encoding="utf-8")
    return out_dir


def _st_pooling_config(encoder: Encoder) -> dict:
    return {
        "word_embedding_dimension": encoder.dim,
        "pooling_mode_cls_token": encoder.pooling == "cls",
        "pooling_mode_mean_tokens": encoder.pooling == "mean",
        "pooling_mode_max_tokens": encoder.pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }


def _write_model_files(encoder: Encoder, out: Path) -> None:
    """config.json + model.safetensors (base-model names, no prefix) + tokenizer files."""
    from safetensors.numpy import save_file

    arch = get_arch(encoder.arch)
    hf_cfg = dict(encoder.config.to_hf())
    hf_cfg["model_type"] = encoder.arch
    hf_cfg["architectures"] = [arch.hf_model_class_name]
    hf_cfg.pop("dtype", None)
    hf_cfg.pop("torch_dtype", None)
    _dump(out / "config.json", hf_cfg)
    # Params must be host values or addressable here (the trainer gathers sharded ones first).
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), multihost.to_host(encoder.params))
    sd = state_dict_from_params(host, prefix="")
    sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(encoder, out)


def _write_tokenizer(encoder: Encoder, out: Path) -> None:
    """tokenizer.json (no baked-in padding/truncation) + the source dir's companion files."""
    src = encoder.model_dir
    if src is not None:
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copyfile(src / name, out / name)
    encoder.tokenizer.save(str(out / "tokenizer.json"))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    cfg["model_max_length"] = int(encoder.max_length)
    _dump(cfg_path, cfg)


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dualenc")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def _readme(encoder: Encoder) -> str:
    return (
        f"# dualenc export\n\nExported by dualenc from `{encoder.source}` "
        f"(weights {encoder.weights_hash()}).\n\n- architecture: {encoder.arch}\n"
        f"- pooling: {encoder.pooling}, normalize: {encoder.normalize}\n"
        f"- max_seq_length: {encoder.max_length}\n"
    )
