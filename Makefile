# Everything goes through the project's own virtual env, made on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean setup soak bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bandit-router serve

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check bandit_router tests clients simulations benchmarks
	$(BIN)/ruff format --check bandit_router tests clients simulations benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .bench

soak: $(STAMP)
	$(BIN)/python -m tests.soak --minutes $${SOAK_MINUTES:-3}

# Not part of `make test`: 10-16 minutes; installs wrk (Debian) when missing and root. Writes BENCHMARKS.md.
# The open-loop generator (benchmarks/openloop.py) needs only the package's own uvloop and httptools.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		{ echo "make bench needs wrk: apt-get install -y wrk (as root)"; exit 1; }
	$(BIN)/python -m benchmarks.run --reps $${BENCH_REPS:-5} --seconds $${BENCH_SECONDS:-5}
