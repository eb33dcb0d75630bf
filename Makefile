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

# Not part of `make test`: 8-15 minutes; needs wrk (apt-get install -y wrk). Writes BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run --reps $${BENCH_REPS:-5} --seconds $${BENCH_SECONDS:-5}
