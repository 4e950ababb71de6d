"""Pretrained encoders in: Hugging Face and sentence-transformers model dirs, or hub ids.

`load_encoder` reads a Hugging Face model dir, a sentence-transformers dir or a hub id into an
`Encoder` (Flax params + tokenizer + pooling); `models.saving` writes the same layouts back. The
readers of one model dir (`resolve_model_dir`, `read_json`, `read_state_dict`, `read_tokenizer`)
are public: the cross-encoder, classifier, reranker, GenQ and TSDAE read their models with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from dualenc.io import InputError
from dualenc.models.convert import WeightsError, params_from_state_dict
from dualenc.models.dual_encoder import EncoderSpec
from dualenc.models.registry import get_arch, init_abstract

POOLINGS = ("cls", "mean", "max", "pooler")
# sentence-transformers pooling names → dualenc pooling kinds (the rest are unsupported).
ST_POOLING = {"cls": "cls", "mean": "mean", "max": "max"}
_ST_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Tokenizer companion files copied beside tokenizer.json when a model dir is written.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
)
DUALENC_META = "dualenc.json"  # pooling / normalize / max_length of a save_hf dir
_BIG = 1_000_000  # tokenizer_config model_max_length above this means "unset"


@dataclasses.dataclass(eq=False)
class Encoder:
    """A text encoder: architecture config + Flax params + tokenizer + pooling recipe."""

    arch: str  # HF model_type, a key of registry.ARCHS
    config: Any
    params: Any  # the tower's Linen params (no {'params': ...} wrapper)
    tokenizer: tokenizers.Tokenizer
    pooling: str  # 'cls' | 'mean' | 'pooler'
    normalize: bool
    max_length: int
    source: str  # where it was loaded from (a dir or a hub id)
    spec: EncoderSpec
    model_dir: Path | None = None  # local dir holding the tokenizer files, for export
    _hash: str | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def dim(self) -> int:
        return int(self.config.hidden_size)

    def weights_hash(self) -> str:
        """Short sha256 over every param's path, dtype, shape and bytes (identifies weights)."""
        if self._hash is None:
            h = hashlib.sha256()
            for path, leaf in sorted(flatten_params(self.params).items()):
                a = np.ascontiguousarray(np.asarray(leaf))
                h.update(f"{path}:{a.dtype}:{a.shape};".encode())
                h.update(a.tobytes())
            self._hash = h.hexdigest()[:16]
        return self._hash


def flatten_params(tree, prefix: str = "") -> dict[str, Any]:
    """{'a/b/c': leaf} of a nested params dict (what weight hashes iterate over, sorted)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        out.update(flatten_params(v, key) if isinstance(v, dict) else {key: v})
    return out


def encoder_from_params(base: Encoder, params) -> Encoder:
    """`base` with new (e.g. trained) tower params; everything else, tokenizer included, kept."""
    return dataclasses.replace(base, params=params)


# ----------------------------------------------------------------------------- loading


def load_encoder(
    name_or_path: str | Path,
    *,
    dtype: str = "float32",
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    weights: bool = True,
) -> Encoder:
    """Loads an HF model dir, a sentence-transformers dir or a hub id as an `Encoder`.

    Plain HF dirs default to CLS pooling without normalisation; sentence-transformers dirs follow
    their modules.json. `pooling` / `normalize` / `max_length` override what the dir says.
    `weights=False`: params are ShapeDtypeStructs (a resume restores the real ones).
    """
    root = resolve_model_dir(name_or_path)
    if is_two_tower_dir(root):
        msg = "a separate-tower export (query/ + passage/): use load_towers or name one tower"
        raise InputError(msg, path=root)
    model_dir, meta = root, _hf_meta(root)
    if (root / "modules.json").exists():
        model_dir, meta = _read_st_layout(root)
    hf_cfg = read_json(model_dir / "config.json", what="config.json (the model config)")
    model_type = hf_cfg.get("model_type")
    try:
        arch = get_arch(model_type)
    except (ValueError, KeyError) as e:
        raise InputError(
            str(e).strip("'\""), path=model_dir / "config.json", field="model_type"
        ) from None
    try:
        config = dataclasses.replace(arch.config_cls.from_hf(hf_cfg), dtype=dtype)
    except (ValueError, TypeError) as e:
        raise InputError(f"unsupported model config: {e}", path=model_dir / "config.json") from None
    params, config = _load_params(model_dir, arch, config, weights)
    tok = read_tokenizer(model_dir)
    pooling = pooling or meta.get("pooling") or "cls"
    if pooling not in POOLINGS:
        raise InputError(
            f"unknown pooling {pooling!r}; expected one of {POOLINGS}", field="pooling"
        )
    normalize = bool(meta.get("normalize", False)) if normalize is None else bool(normalize)
    max_length = int(max_length or meta.get("max_length") or _default_max_length(model_dir, config))
    spec = EncoderSpec(arch=model_type, config=config, pooling=pooling, normalize=normalize)
    return Encoder(
        arch=model_type,
        config=config,
        params=params,
        tokenizer=tok,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        source=str(name_or_path),
        spec=spec,
        model_dir=model_dir,
    )


TOWERS = ("query", "passage")


def is_two_tower_dir(path: str | Path) -> bool:
    """True for a separate-tower export: `query/` and `passage/` model dirs, nothing at the top."""
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "config.json").exists() or (p / "modules.json").exists():
        return False
    return all((p / t).is_dir() for t in TOWERS)


def load_towers(name_or_path: str | Path, **kwargs) -> tuple[Encoder, Encoder]:
    """(query, passage) encoders of a separate-tower export, else one encoder twice."""
    if is_two_tower_dir(name_or_path):
        root = Path(name_or_path).expanduser()
        q_enc, p_enc = (load_encoder(root / t, **kwargs) for t in TOWERS)
        if q_enc.dim != p_enc.dim:
            raise InputError(
                f"query tower is {q_enc.dim}-dim but passage tower is {p_enc.dim}-dim",
                path=root,
            )
        return q_enc, p_enc
    enc = load_encoder(name_or_path, **kwargs)
    return enc, enc


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local dir, or the snapshot of a hub id; otherwise an InputError saying it is neither."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InputError("expected a model directory, got a file", path=path)
    name = str(name_or_path)
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or not name.strip()
    if not looks_local:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: all mean "not found"
            raise InputError(
                f"neither a local directory nor reachable on the Hugging Face hub "
                f"({type(e).__name__}: {e})",
                path=name,
            ) from None
    raise InputError("model directory not found (and not a hub id)", path=name)


def read_json(path: Path, *, what: str) -> dict:
    """A JSON object from a model dir file; an InputError naming the file (and `what` it is) if
    it is missing, malformed or not an object."""
    if not path.exists():
        raise InputError(f"missing {what}", path=path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", path=path, line=e.lineno) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path)
    return obj


def _hf_meta(root: Path) -> dict:
    """The pooling / normalize / max_length that `save_hf` recorded, if any."""
    path = root / DUALENC_META
    return read_json(path, what=DUALENC_META) if path.exists() else {}


def _read_st_layout(root: Path) -> tuple[Path, dict]:
    """(transformer dir, {pooling, normalize, max_length}) from a sentence-transformers dir."""
    modules_path = root / "modules.json"
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", path=modules_path, line=e.lineno) from None
    if not isinstance(modules, list):
        raise InputError("expected a list of modules", path=modules_path)
    model_dir, meta = None, {"normalize": False}
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        sub = root / m.get("path", "")
        if kind == "Transformer":
            model_dir = sub
        elif kind == "Pooling":
            meta["pooling"] = _st_pooling(sub / "config.json")
        elif kind == "Normalize":
            meta["normalize"] = (
                True  # its folder may be absent; sentence-transformers still normalises
            )
        else:
            raise InputError(
                f"unsupported sentence-transformers module {m.get('type')!r}",
                path=modules_path,
                field="type",
            )
    if model_dir is None:
        raise InputError("no sentence_transformers Transformer module", path=modules_path)
    meta["max_length"] = _st_max_length(model_dir)
    meta.setdefault("pooling", "mean")
    return model_dir, meta


def _st_pooling(path: Path) -> str:
    """dualenc pooling kind from 1_Pooling/config.json (new `pooling_mode` or legacy booleans)."""
    cfg = read_json(path, what="pooling config")
    mode = cfg.get("pooling_mode")
    if mode is None:
        mode = [name for key, name in _ST_LEGACY_KEYS.items() if cfg.get(key)] or ["mean"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in ST_POOLING:
        raise InputError(
            f"unsupported pooling mode {'+'.join(map(str, modes))!r}; dualenc supports "
            f"{sorted(ST_POOLING)}",
            path=path,
            field="pooling_mode",
        )
    if cfg.get("include_prompt") is False:
        raise InputError("include_prompt=false is not supported", path=path, field="include_prompt")
    return ST_POOLING[modes[0]]


def _st_max_length(model_dir: Path) -> int | None:
    path = model_dir / "sentence_bert_config.json"
    if path.exists():
        n = read_json(path, what="sentence_bert_config.json").get("max_seq_length")
        if n:
            return int(n)
    return None


def _default_max_length(model_dir: Path, config) -> int:
    """tokenizer_config's model_max_length when set, capped by the position table."""
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    path = model_dir / "tokenizer_config.json"
    if path.exists():
        n = read_json(path, what="tokenizer_config.json").get("model_max_length")
        if isinstance(n, int | float) and 0 < n < _BIG:
            return min(int(n), limit)
    return limit


def _load_params(model_dir: Path, arch, config, weights: bool = True):
    """(params, config) from safetensors (or pytorch_model.bin), checked against model shapes.

    A checkpoint without pooler tensors (saved with add_pooling_layer=False) gets a config
    without the pooler rather than a missing-tensor error.
    """
    single = model_dir / "model.safetensors"
    if not weights and single.exists():  # tensor names from the header; no tensor is read
        from safetensors import safe_open

        with safe_open(str(single), "np") as f:
            sd = dict.fromkeys(f.keys())
    else:
        sd = read_state_dict(model_dir)
    if getattr(config, "add_pooling_layer", False) and not any("pooler." in k for k in sd):
        config = dataclasses.replace(config, add_pooling_layer=False)
    abstract = init_abstract(arch, config)
    if not weights:
        return abstract, config
    try:
        params = params_from_state_dict(sd, abstract, prefix=None)
    except WeightsError as e:
        raise WeightsError(e.missing, e.unexpected, e.mismatched, context=str(model_dir)) from None
    return params, config


def read_state_dict(model_dir: Path) -> dict[str, np.ndarray]:
    """{PyTorch name: array} of a model dir: model.safetensors, its sharded index, or
    pytorch_model.bin (needs torch); an InputError when there are no weights."""
    from safetensors.numpy import load_file

    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.exists():
        return dict(load_file(str(single)))
    if index.exists():
        shards = sorted(set(read_json(index, what="safetensors index")["weight_map"].values()))
        sd = {}
        for shard in shards:
            sd.update(load_file(str(model_dir / shard)))
        return sd
    pt = model_dir / "pytorch_model.bin"
    if pt.exists():
        try:
            import torch
        except ImportError:
            raise InputError(
                "pytorch_model.bin needs torch installed (or convert it to model.safetensors)",
                path=pt,
            ) from None
        sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise InputError("no weights: expected model.safetensors or pytorch_model.bin", path=model_dir)


def read_tokenizer(model_dir: Path) -> tokenizers.Tokenizer:
    """The tokenizer of a model dir; an InputError naming the dir when it has no tokenizer files."""
    from dualenc.tokenization import load_tokenizer

    names = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model")
    if not any((model_dir / n).exists() for n in names):
        raise InputError("missing tokenizer: no tokenizer.json (or vocab files)", path=model_dir)
    return load_tokenizer(model_dir)
