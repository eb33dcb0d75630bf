"""Replay upstreams for the gateway's tests: ``bandit_router.sim.upstream`` under uvicorn on
loopback, the test double of the LLM providers (OpenAI's protocol, answers from real rows)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from bandit_router.sim.upstream import ReplayUpstream
from tests.conftest import _free_port

DATA = Path(__file__).resolve().parents[1] / "examples"
SLICE = DATA / "mmlu_pro_llama2_slice.jsonl"
SLICE_ARMS = DATA / "mmlu_pro_llama2_slice.arms.json"
ARMS = ("llama2-7b", "llama2-13b", "llama2-70b")
PRICES: dict[str, float] = {"llama2-7b": 0.2, "llama2-13b": 0.2857142857142857, "llama2-70b": 0.9}

Upstream = tuple[str, ReplayUpstream]  # its /v1 URL, and the app (to read its counters)
Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


class Rewriting:
    """The replay upstream with each JSON answer, and each streamed event's data, passed through
    ``rewrite``: a provider that miscounts its usage or answers far more than it should."""

    def __init__(self, app: ReplayUpstream, rewrite: Rewrite) -> None:
        self.app = app
        self.rewrite = rewrite

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []  # the response's start: its content-length follows the body

        async def rewritten(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            body = message.get("body", b"")
            if body.startswith(b"data: {"):  # the replay sends one whole event a message
                body = b"data: " + _dumps(self.rewrite(orjson.loads(body[6:]))) + b"\n\n"
            elif body.startswith(b"{"):
                body = _dumps(self.rewrite(orjson.loads(body)))
            if held:
                start = held.pop()
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                if not message.get("more_body"):
                    headers.append((b"content-length", b"%d" % len(body)))
                await send({**start, "headers": headers})
            await send({**message, "body": body})

        await self.app(scope, receive, rewritten)


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SLICE.read_text().splitlines() if line.strip()]


def _dumps(data: dict[str, Any]) -> bytes:
    """Compact JSON that may hold what orjson refuses to write (integers beyond 64 bits)."""
    return json.dumps(data, separators=(",", ":")).encode()


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    """Start a replay upstream of the slice; returns its base URL (ending in /v1) and app.
    ``rewrite``: a function every JSON answer and streamed event goes through (``Rewriting``)."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(rewrite: Rewrite | None = None, **options: Any) -> Upstream:
        app = ReplayUpstream.load(SLICE, SLICE_ARMS, **options)
        port = _free_port()
        served = app if rewrite is None else Rewriting(app, rewrite)
        config = uvicorn.Config(
            served, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
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
