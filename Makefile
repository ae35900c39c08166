# Two commands for a fresh machine: `make demo` and `make test`. Both build .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-kafka test-tansu kafka lint typecheck schemas unit bench clean

# setuptools tells of every editable install in a large boxed warning ("Editable
# installation", about folders named like the package), which pip shows even with
# --quiet: filtered by its text alone (PYTHONWARNINGS reaches the build backend's process),
# so that any other warning and every error still show.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rfm-worker demo

# The whole suite on Apache Kafka (where java and mvn are on PATH; else its runs skip,
# saying why) and the paths the demo takes on Tansu too, the demo's broker (every broker
# test where there is no Apache Kafka to run them on), in one run of pytest.
test: lint typecheck schemas $(STAMP) kafka
	RFM_TEST_BROKER=kafka,tansu $(PYTEST)

# The suite's many `python -m worker` children and its test processes import the same
# modules: compiled once into __pycache__, not again by each (where the environment says
# PYTHONDONTWRITEBYTECODE, as some containers do).
unexport PYTHONDONTWRITEBYTECODE

# Six test processes on two cores: most of the suite waits on brokers, child processes and
# timers. Handed one test at a time, so that none is left with a queue of long tests while
# the others are idle (docs/development.md).
PYTEST := $(BIN)/python -m pytest -q -n 6 --dist load --maxschedchunk 1 -p no:cacheprovider

test-kafka: $(STAMP) kafka
	RFM_TEST_BROKER=kafka $(PYTEST)

test-tansu: $(STAMP)
	RFM_TEST_BROKER=tansu $(PYTEST) -m "$$(command -v java >/dev/null && command -v mvn \
	    >/dev/null && echo demo_path || echo broker)"

# Apache Kafka's jars, fetched with Maven into ~/.cache/rfm-worker once (then nothing).
kafka: $(STAMP)
	$(BIN)/python -m worker.embedded.apache_kafka

lint: $(STAMP)
	$(BIN)/ruff check worker tests
	$(BIN)/ruff format --check worker tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/rfm-worker schemas --check

unit: $(STAMP)
	$(PYTEST) -m unit

# The worker's peer in the throughput scenario, a Quix Streams app: quixstreams (the bench
# extra) in an environment of its own, since it pins an older confluent-kafka and pydantic
# than the worker's (tests/benchmarks/peer.py finds it there).
PEER_VENV  := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed
$(PEER_STAMP): pyproject.toml
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(PEER_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	touch $(PEER_STAMP)

# Every benchmark in one run (a few minutes): a markdown table on stdout, JSON in
# BENCH_OUT (default bench-results.json); sizes via BENCH_* (see tests/benchmarks/run.py).
bench: $(STAMP) $(PEER_STAMP)
	$(BIN)/python tests/benchmarks/run.py

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
