"""Replay upstreams for the gateway's tests: ``bandit_router.sim.upstream`` under uvicorn on
loopback, the test double of the LLM providers (OpenAI's protocol, answers from real rows)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from bandit_router.sim.upstream import ReplayUpstream
from tests.conftest import _free_port

DATA = Path(__file__).resolve().parents[1] / "examples"
SLICE = DATA / "mmlu_pro_llama2_slice.jsonl"
SLICE_ARMS = DATA / "mmlu_pro_llama2_slice.arms.json"
ARMS = ("llama2-7b", "llama2-13b", "llama2-70b")
PRICES: dict[str, float] = {"llama2-7b": 0.2, "llama2-13b": 0.2857142857142857, "llama2-70b": 0.9}

Upstream = tuple[str, ReplayUpstream]  # its /v1 URL, and the app (to read its counters)


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SLICE.read_text().splitlines() if line.strip()]


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    """Start a replay upstream of the slice; returns its base URL (ending in /v1) and app."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**options: Any) -> Upstream:
        app = ReplayUpstream.load(SLICE, SLICE_ARMS, **options)
        port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the replay upstream did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}/v1", app

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=20)


def arm(name: str, base_url: str, model: str | None = None, **upstream: Any) -> dict[str, Any]:
    """One arm of BANDIT_ARMS with an upstream, priced as the slice's arms file says."""
    spec = {"base_url": base_url, "model": model or name, **upstream}
    return {"name": name, "usd_per_mtok": PRICES[name], "upstream": spec}


def arms_json(*arms: dict[str, Any]) -> str:
    return json.dumps(list(arms))
