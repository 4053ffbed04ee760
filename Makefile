# diffres-serve developer entry points. `make serve` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
LINT_PATHS := service tests benchmarks load_tests deploy
# Container image (docs/DEPLOY.md): `make image` (GPU), `make image VARIANT=cpu
# BASE_IMAGE=debian:bookworm-slim`; air-gapped: `make wheelhouse` where an index is
# reachable, then `make image WHEELHOUSE=wheelhouse` where none is.
IMAGE ?= diffres-serve
VARIANT ?= gpu
BASE_IMAGE ?=
WHEELHOUSE ?=
LOADTEST_ARGS ?= --users 8 --spawn-rate 2 --duration 60

.PHONY: serve test lint bench clean image wheelhouse loadtest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The serving install: the ONNX path needs no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Everything: torch (CPU build, pinned), training, export and test tools.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.serve

# Load tests: Locust and matplotlib, no torch.
$(VENV)/.loadtest: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[loadtest]'
	touch $@

serve: $(VENV)/.serve
	$(BIN)/python -m service serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS)

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/diffres_scaling.py

image:
	docker build -t $(IMAGE):$(VARIANT) --build-arg VARIANT=$(VARIANT) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(if $(WHEELHOUSE),--build-arg WHEELHOUSE=$(WHEELHOUSE)) .

wheelhouse:
	$(PYTHON) deploy/image_requirements.py download --variant $(VARIANT) --dest wheelhouse

# A local server on a free loopback port under Locust; reports in runs/loadtest/<time>/.
loadtest: $(VENV)/.loadtest
	$(BIN)/python -m load_tests.run --start-server $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
