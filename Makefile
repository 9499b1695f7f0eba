# Two commands: `make run` (quickstart) and `make test` (the test suite CI runs). Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.cache/hf
export FEDSIM_CACHE := $(CURDIR)/.cache/fedsim
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run test lint bench clean

$(BIN)/fedsim: setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/fedsim

venv: $(BIN)/fedsim

run: venv
	$(BIN)/fedsim run scenarios/quickstart.yaml --out runs/quickstart --overwrite

test: venv
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check fedsim tests benchmarks

bench: venv
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf runs .pytest_cache
