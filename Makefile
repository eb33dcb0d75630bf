# Everything goes through the project's own virtual env, made on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean setup soak bench bench-gateway

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

# Not part of `make test`: 8-15 minutes; installs wrk (Debian) when missing and root. Writes BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		{ echo "make bench needs wrk: apt-get install -y wrk (as root)"; exit 1; }
	$(BIN)/python -m benchmarks.run --reps $${BENCH_REPS:-5} --seconds $${BENCH_SECONDS:-5}

# The gateway's added latency beside LiteLLM's proxy (about 14 minutes; LiteLLM is installed in
# .bench/litellm-venv on first use). Writes .bench/gateway.md; for the lead to wire into bench.
bench-gateway: $(STAMP)
	$(BIN)/python -m benchmarks.gateway --reps $${BENCH_REPS:-3} --seconds $${BENCH_GATEWAY_SECONDS:-40}
