"""Cross-encoder initialisation and export for training.

`model.name_or_path` is either a transformers `*ForSequenceClassification` dir / hub id (loaded
whole, as `rerank.load_reranker` does) or any encoder dir (e.g. all-MiniLM-L6-v2), whose weights
become the base of a `CrossEncoder` with a fresh head; `model.init_random` gives random weights
of the dir's architecture (tests); `model.fresh_head` keeps a classifier dir's encoder under a new
head (intermediate-task training: fine-tuned on STS-B, then MRPC). `save_seq_cls` writes a
transformers `*ForSequenceClassification` dir (config with id2label, model.safetensors, tokenizer
files) that transformers and sentence-transformers' `CrossEncoder` load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from dualenc.inference import rerank
from dualenc.io import atomic_dir
from dualenc.models import layers, loading
from dualenc.models.convert import state_dict_from_params
from dualenc.models.cross_encoder import CrossEncoder
from dualenc.models.registry import get_arch
from dualenc.training.config import ConfigError


@dataclasses.dataclass
class CrossModel:
    """The module description, initial params, tokenizer and where they came from."""

    ce: CrossEncoder
    params: dict
    tokenizer: object
    model_dir: Path | None  # tokenizer companion files are copied from here on export
    source: str


def _is_seq_cls(root: Path) -> bool:
    cfg_path = root / "config.json"
    if (root / "modules.json").exists() or not cfg_path.exists():
        return False
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    return any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def _with_dtype(ce: CrossEncoder, mcfg) -> CrossEncoder:
    cfg = dataclasses.replace(
        ce.config, dtype=mcfg.dtype, remat=layers.remat_setting(bool(mcfg.remat), mcfg.remat_policy)
    )
    return dataclasses.replace(ce, config=cfg)


def load_cross_model(mcfg, num_labels: int) -> CrossModel:
    """The CrossModel for `model.*` with `num_labels` outputs (see the module docstring)."""
    rng = jax.random.key(int(mcfg.init_seed))
    if mcfg.init_random:
        root = Path(mcfg.name_or_path)
        hf = loading.read_json(root / "config.json", what="config.json (the model config)")
        arch = get_arch(hf["model_type"])
        cfg = arch.config_cls.from_hf(hf)
        overrides = dict(mcfg.config_overrides)
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
        if bad:
            raise ConfigError(f"model.config_overrides: unknown fields {bad}")
        ce = CrossEncoder(arch.model_type, dataclasses.replace(cfg, **overrides), num_labels)
        ce = _with_dtype(ce, mcfg)
        params = jax.tree.map(np.asarray, ce.init(rng))
        tok = loading.read_tokenizer(root)
        return CrossModel(ce, params, tok, root, "random init")
    root = loading.resolve_model_dir(mcfg.name_or_path)
    if _is_seq_cls(root):
        rr = rerank.load_reranker(root, dtype=mcfg.dtype)
        if mcfg.fresh_head:  # intermediate-task transfer, e.g. an STS-B reranker -> MRPC
            ce = _with_dtype(CrossEncoder(rr.ce.arch, rr.ce.config, num_labels), mcfg)
            params = ce.from_base(rr.params[ce.spec.hf_prefix], rng)
            params = jax.tree.map(np.asarray, params)
            src = f"{mcfg.name_or_path} (classifier's encoder) + fresh {num_labels}-label head"
            return CrossModel(ce, params, rr.tokenizer, root, src)
        if rr.ce.num_labels != num_labels:
            raise ConfigError(
                f"cross.num_labels={num_labels} but {root} has {rr.ce.num_labels} labels"
            )
        ce = _with_dtype(rr.ce, mcfg)
        return CrossModel(ce, rr.params, rr.tokenizer, root, str(mcfg.name_or_path))
    enc = loading.load_encoder(root, dtype=mcfg.dtype)
    ce = _with_dtype(CrossEncoder(enc.arch, enc.config, num_labels), mcfg)
    params = jax.tree.map(np.asarray, ce.from_base(enc.params, rng))
    src = f"{mcfg.name_or_path} (encoder) + fresh {num_labels}-label head"
    return CrossModel(ce, params, enc.tokenizer, enc.model_dir, src)


def save_seq_cls(
    model: CrossModel,
    host_params,
    out_dir: str | os.PathLike,
    *,
    label_names: list[str],
    max_length: int,
    extra: dict | None = None,
) -> Path:
    """Writes a transformers `*ForSequenceClassification` dir atomically; `extra` goes to
    dualenc_cross.json (e.g. the step and dev metric it was chosen by)."""
    from safetensors.numpy import save_file

    ce = model.ce
    spec = get_arch(ce.arch)
    hf_cfg = dict(ce.config.to_hf())
    for k in ("dtype", "torch_dtype"):
        hf_cfg.pop(k, None)
    names = label_names[: ce.num_labels] if ce.num_labels > 1 else ["LABEL_0"]
    hf_cfg.update(
        model_type=ce.arch,
        architectures=[spec.hf_seq_class_name],
        num_labels=ce.num_labels,
        id2label={str(i): n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
    )
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), host_params)
    sd = {k: np.ascontiguousarray(v) for k, v in state_dict_from_params(host).items()}
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        _dump(tmp / "config.json", hf_cfg)
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if model.model_dir is not None:
            for name in loading.TOKENIZER_FILES:
                if (Path(model.model_dir) / name).exists():
                    shutil.copyfile(Path(model.model_dir) / name, tmp / name)
        model.tokenizer.save(str(tmp / "tokenizer.json"))
        tcfg_path = tmp / "tokenizer_config.json"
        tcfg = json.loads(tcfg_path.read_text(encoding="utf-8")) if tcfg_path.exists() else {}
        tcfg["model_max_length"] = int(max_length)
        _dump(tcfg_path, tcfg)
        _dump(tmp / "dualenc_cross.json", {"max_length": int(max_length), **(extra or {})})
    return Path(out_dir)


def load_params(model: CrossModel, model_dir: str | os.PathLike) -> dict:
    """Params of a dir written by `save_seq_cls` (the best checkpoint), shaped as `model`'s."""
    rr = rerank.load_reranker(model_dir)
    return jax.tree.map(np.asarray, rr.params)


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
