# Two commands for a fresh machine (each installs what it needs into .venv):
#   make demo   - start the embedded stack, run two agent processes that exchange envelopes, stop
#   make test   - lint, type-check and run the whole test suite against real servers
PYTHON ?= $(shell command -v python3.13 || command -v python3.12 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-stack

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "L9 needs Python 3.11+, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/l9 demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	bash scripts/run-tests.sh $(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bus_throughput.py

clean-stack: $(STAMP)
	$(BIN)/l9 dev down
