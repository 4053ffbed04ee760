# diffres-serve developer entry points. `make serve` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint bench clean

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

serve: $(VENV)/.serve
	$(BIN)/python -m service serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/ruff check service tests benchmarks
	$(BIN)/pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check service tests benchmarks

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/diffres_scaling.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
