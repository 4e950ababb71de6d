"""dualenc: train and evaluate neural retrievers with JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="dualenc",
    version="0.1.0",
    description="JAX/Flax dual encoders, cross-encoders and retrieval evaluation at TPU/GPU scale",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["dualenc", "dualenc.*"]),
    # native CPU kernels, compiled on first use (dualenc/models/kernels.py)
    # the search page of `dualenc.serve` (plain HTML + JS + CSS, no build step)
    package_data={"dualenc": ["kernels/*.cc", "aot/gpu_specs/*.txtpb", "serve/static/*"]},
    install_requires=[
        "jax[cpu]>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.1",
        "etils[epath]>=1.7",
        "absl-py>=2.1",
        "numpy>=2.0",
        "transformers>=5.0",
        "tokenizers>=0.22",
        "safetensors>=0.5",
        "huggingface_hub>=1.0",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "array-record>=0.8",  # imported directly: dualenc.data.tfds_io writes the shards
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
        # setuptools >= 70.1 builds wheels by itself: tests/package_test.py builds one offline.
        # The serve tests drive the real app over HTTP (httpx) and its page in headless Chromium
        # (selenium; the browser itself is Debian's chromium + chromium-driver, see .ci/run).
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "setuptools>=70.1",
            "httpx>=0.27",
            "selenium>=4.20",
            "fastapi>=0.110",
            "uvicorn>=0.29",
        ],
        # `python -m dualenc.serve`: the HTTP API and search page. uvicorn[standard] brings
        # httptools and uvloop, the HTTP parser and event loop docs/results.md's serving figures
        # were measured with (pure-Python h11 costs more CPU a request on a 2-core machine).
        "serve": ["fastapi>=0.110", "uvicorn[standard]>=0.29"],
        "bench": ["psutil>=5.9"],
        # `dualenc.export --format onnx` writes the graph with onnx; onnxruntime runs it.
        "export": ["onnx>=1.17", "onnxruntime>=1.20"],
        # Accelerator runtimes, used by launch/tpu_pod.sh and launch/gpu_cluster.sh. gs:// workdirs
        # go through etils.epath (gcsfs) for metrics/exports and tensorstore for checkpoints.
        "tpu": ["jax[tpu]>=0.10", "etils[epath-gcs]>=1.7"],
        "cuda12": ["jax[cuda12]>=0.10", "etils[epath-gcs]>=1.7"],
    },
)
