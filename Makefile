# The README's commands on a fresh machine with Python 3.11+ (the README opens with them):
#   make sweep      the whole pipeline on the embedded default (MovieLens 100K when it is in
#                   the data dir, else the synthetic data): a --smoke sweep, about a minute
#   make test-fast  the fast tier: every test that starts no Ray, runs no sweep, opens no
#                   browser and trains on no million ratings (about a minute)
#   make test       the checks and the whole suite, the fast tier first, as CI runs them
#                   (.ci/run calls it)
# Each first sets up $(VENV) when needed, as the README's longer set-up does: the CPU torch
# pin first (a looser requirement with no torch installed pulls a multi-GB CUDA build), then
# the project with its dev and viz extras. DATA_DIR=... points `make sweep` at your datasets.
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?=
BIN := $(VENV)/bin

.PHONY: setup sweep test test-fast

setup: $(VENV)/.installed

# one line, and no half-built venv left behind, when Python or the torch wheel is missing
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "make: Python 3.11 or newer is needed to build $(VENV); '$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo missing) (set PYTHON=python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 || { rm -rf $(VENV); \
	  echo "make: no torch==2.13.0 wheel for this Python and platform ($$($(PYTHON) --version 2>/dev/null), $$(uname -m)); see https://pytorch.org/get-started/locally/" >&2; exit 1; }
	$(BIN)/python -m pip install -q -e '.[dev,viz]'
	touch $@

sweep: setup
	$(BIN)/python -m orchestrator sweep --smoke --dataset default $(if $(DATA_DIR),--data-dir $(DATA_DIR))

test: setup
	PATH="$(abspath $(BIN)):$$PATH" .ci/test

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" .ci/test fast
