# Everything goes through the project's own virtual env, made on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean setup soak bench bench-service bench-gateway bench-deployments wrk

setup: $(STAMP)

# setuptools' "Editable installation ... folders with the same name as your package" note is
# information only (the folder of that name here is the package itself), and every editable mode
# prints one (compat a deprecation instead), so it is filtered by its text; other warnings show.
PIP_INSTALL := PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (first run, or pyproject.toml changed: about a minute)..."
	@$(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) --upgrade pip
	@$(PIP_INSTALL) -e '.[dev]'
	@touch $(STAMP)
	@echo "$(VENV) ready"

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
	$(BIN)/python -m tests.soak --minutes $${SOAK_MINUTES:-3} $${SOAK_ARGS:-}

# Not part of `make test`. `make bench` runs the three parts below one after the other (about
# 35 minutes); each can be run alone.
bench: bench-service bench-deployments bench-gateway

# The HTTP load generator of bench-service and bench-deployments: Debian's, installed when
# missing and root.
wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		{ echo "make bench needs wrk: apt-get install -y wrk (as root)"; exit 1; }

# 10-16 minutes. Writes BENCHMARKS.md. The open-loop generator (benchmarks/openloop.py) needs
# only the package's own uvloop and httptools.
bench-service: $(STAMP) wrk
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run --reps $${BENCH_REPS:-5} --seconds $${BENCH_SECONDS:-5}

# Choose and reward pairs a second for 1, 4 and 16 deployments, on one Redis and on a local
# Redis Cluster, with and without WAIT for one replica (about 5 minutes).
bench-deployments: $(STAMP) wrk
	$(BIN)/python -m benchmarks.deployments --seconds $${BENCH_SECONDS:-5} --reps $${BENCH_REPS:-3} \
		--wait-replicas 0,1

# The gateway's added latency beside LiteLLM's proxy (about 14 minutes; LiteLLM is installed in
# .bench/litellm-venv on first use). Writes .bench/gateway.md.
bench-gateway: $(STAMP)
	$(BIN)/python -m benchmarks.gateway --reps $${BENCH_REPS:-3} --seconds $${BENCH_GATEWAY_SECONDS:-40}
