"""Portable export of bi-encoders and cross-encoders: ONNX (`onnx`) or `jax.export` (`portable`),
and their runtimes (`runtime`). `python -m dualenc.export` runs `__main__`."""
