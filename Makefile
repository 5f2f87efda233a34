# Two commands on a fresh machine with Python 3.11+ (the README opens with them):
#   make sweep   the whole pipeline on the embedded default (MovieLens 100K when it is in the
#                data dir, else the synthetic data): a --smoke sweep, about a minute
#   make test    the checks and the whole test suite, as CI runs them (.ci/run calls it)
# Both first set up $(VENV) when needed, as the README's longer set-up does: the CPU torch
# pin first (a looser requirement with no torch installed pulls a multi-GB CUDA build), then
# the project with its dev and viz extras. DATA_DIR=... points `make sweep` at your datasets.
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?=
BIN := $(VENV)/bin

.PHONY: setup sweep test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,viz]'
	touch $@

sweep: setup
	$(BIN)/python -m orchestrator sweep --smoke --dataset default $(if $(DATA_DIR),--data-dir $(DATA_DIR))

test: setup
	PATH="$(abspath $(BIN)):$$PATH" .ci/test
