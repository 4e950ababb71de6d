"""Native XLA:CPU kernels, compiled from `dualenc/kernels/*.cc` on first use and cached.

Why: on CPU, XLA runs attention as separate passes over B x N x L x L scores, ~40 % of the
MiniLM forward at 32 x 256 where the matmuls are 90 % of the FLOPs; PyTorch's fused CPU kernel
spends a quarter of that (benchmarks/README.md). `attention.cc` keeps each head's scores in
cache, forward and backward, dropout included (the hashed mask of `dropout.py`). `dense.cc`
computes a dense layer's weight and bias gradients (XᵀG at the GEMM rate XLA reaches only for
untransposed operands, the column sums of G while it is packed): a third of the train step
went there (benchmarks/README.md). They are built
with the system C++ compiler ($CXX or g++) against jaxlib's FFI headers into the dualenc cache
dir, keyed by source, flags and jaxlib version, and registered as XLA FFI targets. Anything
missing (not Linux x86-64 with AVX-512, no compiler, a failed build) or DUALENC_KERNELS=0 means
the XLA path runs instead, with one log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from dualenc.models import dropout, target

log = logging.getLogger(__name__)

SOURCES = tuple(
    Path(__file__).resolve().parent.parent / "kernels" / n for n in ("attention.cc", "dense.cc")
)
FLAGS = ("-O3", "-march=x86-64-v4", "-std=c++17", "-shared", "-fPIC", "-w", "-pthread")
TARGET = "dualenc_attention"
BWD_TARGET = "dualenc_attention_bwd"
DENSE_GRAD_TARGET = "dualenc_dense_grad"
_disabled = 0  # > 0 inside `disabled()`


def _cpu_has_avx512() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in flags.split() for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))


def _library_path() -> Path:
    from dualenc.inference.corpus_cache import default_cache_dir

    key = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES))
    key.update(" ".join(FLAGS).encode() + jaxlib.__version__.encode())
    return default_cache_dir() / "kernels" / f"dualenc-{key.hexdigest()[:16]}.so"


def _build(out: Path) -> None:
    """Compiles to a temp file in out's directory, then renames (concurrent builds are safe)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError("no C++ compiler ($CXX or g++) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", "-o", tmp, *map(str, SOURCES)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> str | None:
    """The registered FFI target name, or None (reason logged once) when the kernel is unusable."""
    why = None
    if os.environ.get("DUALENC_KERNELS", "1") == "0":
        why = "DUALENC_KERNELS=0"
    elif platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        why = f"{platform.system()} {platform.machine()} (the kernel targets Linux x86-64)"
    elif not _cpu_has_avx512():
        why = "this CPU lacks AVX-512"
    if why is None:
        try:
            path = _library_path()
            if not path.exists():
                _build(path)
            lib = ctypes.CDLL(str(path))
            for name, fn in (
                (TARGET, lib.DualencAttention),
                (BWD_TARGET, lib.DualencAttentionBwd),
                (DENSE_GRAD_TARGET, lib.DualencDenseGrad),
            ):
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(fn), platform="cpu")
            return TARGET
        except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path
            why = f"build/load failed: {e}"
    log.info("dualenc CPU kernels off (%s): XLA's attention and dense gradients run instead", why)
    return None


def attention_target() -> str | None:
    """The FFI target for `fused_attention`, or None (outside `disabled()` only)."""
    return None if _disabled else _load()


def usable(*arrays) -> bool:
    """The kernels can replace XLA here: float32 operands with static shapes, the CPU backend
    with one device (a custom call has no sharding rule: on a mesh XLA would gather its
    inputs), outside `disabled()`, and the library built."""
    if target.platform() != "cpu" or target.device_count() != 1:
        return False
    for a in arrays:
        if a.dtype != jnp.float32 or not all(isinstance(d, int) for d in a.shape):
            return False
    return attention_target() is not None


def dense_grad(x, g, threads: int | None = None):
    """(xᵀ g, Σ_rows g) for x (T, K), g (T, N) float32: a dense layer's weight and bias
    gradients in one native call. Call only when `usable(x, g)`. Half the cores by default: XLA
    runs the independent input-gradient dot g · Wᵀ beside it (train step +4 % over all cores,
    2-core machine)."""
    k, n = x.shape[1], g.shape[1]
    out = (jax.ShapeDtypeStruct((k, n), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32))
    threads = np.int32(threads or max(1, len(os.sched_getaffinity(0)) // 2))
    return jax.ffi.ffi_call(DENSE_GRAD_TARGET, out)(x, g, threads=threads)


@contextlib.contextmanager
def disabled():
    """Trace without native kernels (e.g. for `jax.export`, whose artifacts must be portable)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def _operands(mask, words, rate, threads, segments):
    """The kernels' int32 mask (B, 1|L, L) (segment ids (B, 1, L) with `segments`), key words
    and attributes."""
    mask = mask.astype(jnp.int32) if segments else (mask != 0).astype(jnp.int32)
    mask = mask[:, None, :] if mask.ndim == 2 else mask
    thresh = dropout.threshold_int(rate) if words is not None and rate > 0 else 0
    words = jnp.zeros((2,), jnp.uint32) if words is None else words
    attrs = dict(
        threads=np.int32(threads or len(os.sched_getaffinity(0))),
        thresh=np.int64(thresh),
        keep=np.float32(1.0 - rate),
        segments=np.int32(bool(segments)),
    )
    return mask, words, attrs


def fused_attention(
    q, k, v, mask, words=None, rate: float = 0.0, threads: int | None = None, segments=False
):
    """Attention by the native kernel: q, k, v (B, L, N, D) float32; mask (B, L) over keys,
    (B, L, L) query × key, or with `segments` (B, L) segment ids (a query sees the keys of its
    own id: packed rows, whose keys outside a query's text the kernel then never visits);
    dropout on the probabilities when `words` (`dropout.key_words`) is given, the same mask as
    `dropout.py` draws → (B, L, N, D). `attention.py` gives it its VJP. Call only when
    `attention_target()` is set."""
    mask, words, attrs = _operands(mask, words, rate, threads, segments)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(q.shape, q.dtype))
    return call(q, k, v, mask, words, **attrs)


def fused_attention_bwd(
    q, k, v, mask, words, rate, out, d_out, threads: int | None = None, segments=False
):
    """(dq, dk, dv) of `fused_attention` for the cotangent d_out, recomputing the probabilities
    and the dropout mask per (row, head) in cache."""
    mask, words, attrs = _operands(mask, words, rate, threads, segments)
    shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    call = jax.ffi.ffi_call(BWD_TARGET, (shape, shape, shape))
    return call(q, k, v, mask, words, out, d_out, **attrs)
