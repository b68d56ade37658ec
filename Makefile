# Every install goes through constraints.txt so torch stays the CPU build on machines without a GPU.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install test lint serve train bench bench-quality clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp makes `make install` (and every target that needs it) a no-op until
# pyproject.toml or constraints.txt change.
STAMP := $(VENV)/.install-stamp

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

serve: install
	$(BIN)/vq-serve --host $(HOST) --port $(PORT)

train: install
	$(BIN)/vq-train fit --config configs/default.yaml

bench: install
	$(BIN)/python bench/quantizers.py
	$(BIN)/python bench/service.py

bench-quality: install
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
