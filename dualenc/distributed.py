"""Deprecated alias of `dualenc.multihost` (kept for old imports)."""

from dualenc.multihost import _ENV, cluster_env
from dualenc.multihost import initialize as maybe_initialize

__all__ = ["_ENV", "cluster_env", "maybe_initialize"]
