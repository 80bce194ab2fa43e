# Two commands for a fresh machine (each installs what it needs into .venv):
#   make demo   - the extraction pipeline: embedded stack, every agent as a process, l9 extract, verify, stop
#   make test   - lint, type-check and run the whole test suite against real servers
# The first interpreter that really runs and is 3.11+ (pyenv shims may exist without a version behind them).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# docker-compose 1.29 for the doc test of OPERATIONS.md, apart: its pins are old.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
TOOLS_REQS := tests/doctools/compose-tools.txt

.PHONY: demo test lint bench clean-stack browser

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "L9 needs Python 3.11+ (python3, python3.11, ...): none found" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

$(TOOLS_STAMP): $(TOOLS_REQS) tests/doctools/compose-tools-build.txt
	@test -n "$(PYTHON)" || { echo "L9 needs Python 3.11+ (python3, python3.11, ...): none found" >&2; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	PIP_CONSTRAINT=$(CURDIR)/tests/doctools/compose-tools-build.txt \
		$(TOOLS)/bin/pip install --quiet --disable-pip-version-check -r $(TOOLS_REQS)
	touch $(TOOLS_STAMP)

demo: $(STAMP)
	$(BIN)/l9 demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The console's browser tests drive Debian's chromium (Playwright with its executable_path):
# installed here when this is root with apt-get, else those tests skip, saying why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make browser: chromium could not be installed: the console's browser tests will skip" >&2; \
	else echo "make browser: not root or no apt-get: the console's browser tests will skip" >&2; fi

test: lint $(TOOLS_STAMP) browser
	bash scripts/run-tests.sh $(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bus_throughput.py

clean-stack: $(STAMP)
	$(BIN)/l9 dev down
