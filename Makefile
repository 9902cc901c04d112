# unfragile — two commands for a new user: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# GPU users: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" make setup
TORCH_SPEC ?= torch==2.13.0
MODELS_DIR ?= .models

.PHONY: setup protos run test bench bench-peers clean models

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[dev,onnx]'
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

bench: setup
	$(PY) -m benchmarks.run

# unfragile beside LitServe and PyTriton (their pinned venvs are built under .peers/ on first use)
bench-peers: setup
	$(PY) -m benchmarks.run --only bench_peers

clean:
	rm -rf unfragile build *.egg-info
