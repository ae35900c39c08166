# Two commands for a fresh machine: `make demo` and `make test`. Both build .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck schemas unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rfm-worker demo

test: lint typecheck schemas
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check worker tests
	$(BIN)/ruff format --check worker tests

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/rfm-worker schemas --check

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

# Every benchmark in one run (a few minutes): a markdown table on stdout, JSON in
# BENCH_OUT (default bench-results.json); sizes via BENCH_* (see tests/benchmarks/run.py).
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
