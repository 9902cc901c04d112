# unfragile — two commands for a new user: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# GPU users: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" make setup
TORCH_SPEC ?= torch==2.13.0
MODELS_DIR ?= .models

.PHONY: setup protos run test lint bench bench-peers bench-gpu clean models

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[all,dev,onnx]'
	touch $@

setup: $(VENV)/.installed protos

protos: $(VENV)/.installed
	$(PY) -m services.core.protogen

models: setup
	$(VENV)/bin/unfragile models build-tiny --out $(MODELS_DIR)

run: setup
	$(VENV)/bin/unfragile demo --models-dir $(MODELS_DIR)

test: setup
	$(PY) -m pytest -q

# ruff over the tree; mypy --strict on the layers everything stands on, default checks elsewhere.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict common graph services/core
	$(VENV)/bin/mypy services benchmarks

bench: setup
	$(PY) -m benchmarks.run

# Real-size Kosmos-2 and Stable Diffusion served in fp16 on a CUDA GPU (docs/gpu.md), results in
# benchmarks/gpu/. The script makes $(GPU_VENV) on top of python3's own (CUDA) torch and installs the
# project's extras there; GPU_CHECK_ARGS="--device cpu --quick" smoke-runs it.
GPU_VENV ?= .venv-gpu
bench-gpu:
	VENV=$(GPU_VENV) benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

# unfragile beside LitServe and PyTriton (their pinned venvs are built under .peers/ on first use)
bench-peers: setup
	$(PY) -m benchmarks.run --only bench_peers

clean:
	rm -rf unfragile build *.egg-info
