"""dualenc: JAX/Flax dual encoders, cross-encoders and retrieval evaluation."""

__version__ = "0.1.0"
