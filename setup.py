"""dualenc: train and evaluate neural retrievers with JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="dualenc",
    version="0.1.0",
    description="JAX/Flax dual encoders, cross-encoders and retrieval evaluation at TPU/GPU scale",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["dualenc", "dualenc.*"]),
    install_requires=[
        "jax[cpu]>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=2.0",
        "transformers>=5.0",
        "tokenizers>=0.22",
        "safetensors>=0.5",
        "huggingface_hub>=1.0",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "scann>=1.4.2",
        "bm25s>=0.3",
        "ir-measures>=0.4",
        "tqdm>=4.66",
        "matplotlib>=3.9",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # torch comes from the Makefile (pinned CPU wheel); sentence-transformers is installed
        # --no-deps there too so that it cannot pull a CUDA build of torch.
        "test": ["pytest>=8", "ruff>=0.6"],
        "bench": ["psutil>=5.9"],
    },
)
