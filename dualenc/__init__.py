"""dualenc: JAX/Flax dual encoders, cross-encoders and retrieval evaluation."""

from dualenc import xla_env as _xla_env

_xla_env.apply_defaults()  # before any JAX backend starts; see dualenc/xla_env.py

__version__ = "0.1.0"
