"""One generic, name-driven converter between PyTorch state dicts and Flax param trees.

Our Linen modules mirror Hugging Face state-dict names, so a param path maps to a tensor name by
joining with '.', and the leaf name picks the rule: `kernel` ↔ `weight` transposed (Linear),
`embedding` ↔ `weight` (Embedding), `scale` ↔ `weight` (LayerNorm), `bias` ↔ `bias`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Base-model attribute names in HF `*For*` models (`bert.embeddings...`).
BASE_PREFIXES = ("bert.", "distilbert.", "deberta.")
# Non-persistent buffers that some checkpoints still carry; never weights.
BUFFER_PATTERNS = (r"(^|\.)position_ids$", r"(^|\.)token_type_ids$", r"num_batches_tracked$")
_LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


class WeightsError(ValueError):
    """The state dict does not fit the model; lists every missing / unexpected / mis-shaped name."""

    def __init__(self, missing=(), unexpected=(), mismatched=(), context: str = ""):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)  # (name, expected shape, got shape)
        parts = [f"weights do not fit the model{' (' + context + ')' if context else ''}:"]
        if self.missing:
            parts.append(f"missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            parts.append(f"unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.mismatched:
            shapes = [f"{n} expected {tuple(e)} got {tuple(g)}" for n, e, g in self.mismatched]
            parts.append(f"mis-shaped ({len(self.mismatched)}): " + "; ".join(shapes))
        super().__init__("\n  ".join(parts))


def _flatten(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*path, str(key))))
        else:
            out[(*path, str(key))] = value
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def hf_name(path: Sequence[str]) -> str:
    """Params path ('encoder', 'layer', '0', ..., 'kernel') → HF tensor name '...0.x.weight'."""
    leaf = path[-1]
    if leaf not in _LEAF_TO_HF:
        raise ValueError(f"no state-dict rule for param leaf {leaf!r} at {'/'.join(path)}")
    return ".".join([*path[:-1], _LEAF_TO_HF[leaf]])


def _hf_shape(path: Sequence[str], shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(reversed(shape)) if path[-1] == "kernel" else tuple(shape)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _is_buffer(name: str) -> bool:
    return any(re.search(p, name) for p in BUFFER_PATTERNS)


def _normalise_prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def _detect_prefix_mode(expected: Iterable[str], names: Iterable[str]) -> tuple[str, str]:
    """('strip', P): checkpoint has base prefix P, the model has none (a base model);
    ('add', P): the model nests its base model under P, the checkpoint is a bare base model;
    ('', ''): names already agree."""
    expected, names = list(expected), list(names)
    for p in BASE_PREFIXES:
        model_has = any(n.startswith(p) for n in expected)
        ckpt_has = any(n.startswith(p) for n in names)
        if ckpt_has and not model_has:
            return "strip", p
        if model_has and not ckpt_has:
            return "add", p
    return "", ""


def _rename(
    sd: Mapping[str, Any], expected: set[str], prefix: str | None
) -> tuple[dict[str, Any], list[str]]:
    """State-dict names → model names; returns (renamed, ignored names of other heads)."""
    names = [n for n in sd if not _is_buffer(n)]
    if prefix is not None:
        mode, p = ("strip", _normalise_prefix(prefix)) if prefix else ("", "")
    else:
        mode, p = _detect_prefix_mode(expected, names)
    out, ignored = {}, []
    for n in names:
        new = n
        if mode == "strip":
            if not n.startswith(p):
                ignored.append(n)  # another head of the checkpoint (e.g. `cls.predictions`)
                continue
            new = n[len(p) :]
        elif mode == "add" and n not in expected:
            new = p + n
        if new not in expected:  # old checkpoints name LayerNorm params gamma / beta
            new = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", new))
        out[new] = sd[n]
    return out, ignored


def params_from_state_dict(
    sd: Mapping[str, Any],
    abstract_params: Mapping[str, Any],
    *,
    prefix: str | None = None,
    fill_missing: Mapping[str, Any] | None = None,
    ignore_unexpected: Sequence[str] = (),
) -> dict[str, Any]:
    """Params (nested dict of numpy arrays, in each leaf's dtype) from a PyTorch-named state dict.

    `abstract_params`: `jax.eval_shape(model.init, ...)['params']` (or any tree with shape/dtype).
    `prefix=None` auto-detects a base-model prefix ('bert.', ...) on either side; `prefix='bert.'`
    strips it from the checkpoint (other names are ignored); `prefix=''` maps names as they are.
    `fill_missing`: a params tree whose leaves stand in for tensors the checkpoint lacks (e.g. a
    fresh classifier head). `ignore_unexpected`: regexes of checkpoint names to drop silently.
    Raises `WeightsError` naming every missing, unexpected and mis-shaped tensor.
    """
    flat = _flatten(abstract_params)
    by_name = {hf_name(path): path for path in flat}
    renamed, _ = _rename(sd, set(by_name), prefix)
    fill = _flatten(fill_missing) if fill_missing is not None else {}
    missing, mismatched, out = [], [], {}
    for name, path in by_name.items():
        leaf = flat[path]
        if name not in renamed:
            if path in fill:
                out[path] = np.asarray(fill[path])
            else:
                missing.append(name)
            continue
        value = _to_numpy(renamed[name])
        want = _hf_shape(path, leaf.shape)
        if tuple(value.shape) != want:
            mismatched.append((name, want, tuple(value.shape)))
            continue
        value = value.T if path[-1] == "kernel" else value
        out[path] = np.ascontiguousarray(value).astype(leaf.dtype, copy=False)
    unexpected = [
        n
        for n in renamed
        if n not in by_name and not any(re.search(p, n) for p in ignore_unexpected)
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(missing, unexpected, mismatched)
    return _unflatten(out)


def state_dict_from_params(params: Mapping[str, Any], *, prefix: str = "") -> dict[str, np.ndarray]:
    """PyTorch-named state dict (numpy arrays, kernels transposed back) from a params tree."""
    prefix = _normalise_prefix(prefix)
    out = {}
    for path, value in _flatten(params).items():
        value = np.asarray(value)
        out[prefix + hf_name(path)] = np.ascontiguousarray(
            value.T if path[-1] == "kernel" else value
        )
    return out
